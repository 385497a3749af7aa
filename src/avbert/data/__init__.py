"""The data layer: where training samples come from and how they become model inputs.

Sources (`folders`: class folders, prepared layouts and CSV tables; `datasets_source`: `datasets` datasets; `shards`:
WebDataset tar shards with their manifest), the training transform that decodes a row into model inputs in DataLoader
workers (`transform`), and preparation (`prepare`: the `avbert-prepare` command line; `synthetic`: the demo's
generated videos). It builds on the processing layer (`avbert.processing_avbert` and below) and knows nothing of the
training layer above it.
"""
