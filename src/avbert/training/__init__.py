"""Fine-tuning, evaluation and data preparation for AVBERT with the transformers `Trainer` and `datasets`."""
