"""The training transform: a row of a source -> model inputs, in the DataLoader workers; and the collator.

Data flows one way: a source's rows (``path`` or a ``datasets`` video / audio value, ``label``) -> ``MediaTransform``
(the processor decodes and processes the file) -> ``AVBertDataCollator`` -> model. Decoding happens per row on
``__getitem__``, so nothing is decoded twice or held in memory, and an unreadable file becomes an ``error`` on its row
instead of stopping a run of many hours: the collator drops such rows and says which files they were.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from datasets import Audio, Dataset, DatasetDict, Video

from ..media_decoding import MediaDecodeError, as_media_source, read_audio

logger = logging.getLogger(__name__)

__all__ = ["AVBertDataCollator", "MediaDataset", "MediaTransform"]

# The model inputs each modality produces.
MODALITIES = {
    "audio-visual": ("pixel_values", "input_features"),
    "visual": ("pixel_values",),
    "audio": ("input_features",),
}


# The columns a row's media can be in: `load_media_dataset`'s paths, `datasets`' video and audio folders.
MEDIA_COLUMNS = ("path", "video", "audio")


class MediaTransform:
    """Decodes a batch of ``path`` / ``label`` rows for ``Dataset.with_transform``; runs in the DataLoader workers.

    A plain class holding only the processor (picklable), so it can be sent to spawned workers. A file that cannot be
    decoded does not raise: its row gets ``error = "PATH: reason"`` and ``None`` tensors, and the collator drops it,
    so one bad file among thousands costs one sample instead of the run.

    With ``defer_normalization=True`` the frames leave the worker as uint8 clips (resized, cropped and flipped; a
    quarter of the float32 bytes) with their ``clip_jitter`` factors when the augmentation jitters clips; the
    ``avbert.training`` trainers given ``video_processor=`` finish them (``AVBertVideoProcessor.normalize_clips``) on
    the device the model runs on.
    """

    def __init__(
        self,
        processor: Any,
        modality: str,
        train: bool,
        augmentation: Mapping[str, Any] | None = None,
        defer_normalization: bool = False,
    ) -> None:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {sorted(MODALITIES)}, not {modality!r}")
        self.processor = processor
        self.modality = modality
        self.train = train
        self.defer_normalization = defer_normalization and "pixel_values" in MODALITIES[modality]
        # Extra processor arguments for training only (e.g. pretraining's per-clip jitter), so that they are not
        # saved with the processor and do not carry over into fine-tuning.
        self.augmentation = dict(augmentation or {}) if train else {}

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        keys = MODALITIES[self.modality] + (("clip_jitter",) if self.defer_normalization else ())
        out: dict[str, list] = {
            "labels": [int(label) for label in batch["label"]],
            "error": [],
            **{key: [] for key in keys},
        }
        # `path` rows (load_media_dataset) or the `video` / `audio` column of a `datasets` folder (load_dataset(
        # "videofolder", ...)): torchcodec decoders or {"bytes", "path"} dicts, decoded here from their file.
        column = _media_column(batch)
        for value in batch[column]:
            path = _media_name(value)
            try:
                features, error = self._decode(as_media_source(value)), None
            except (MediaDecodeError, ValueError) as exc:
                features, error = {}, str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            for key in keys:
                out[key].append(features.get(key))
            out["error"].append(error)
        return out

    def _decode(self, path: Any) -> dict[str, torch.Tensor]:
        """One file -> tensors without the batch dimension."""
        if self.modality == "audio":
            waveform, rate = read_audio(path)
            inputs = self.processor(
                waveform, sampling_rate=rate, return_tensors="pt", apply_masking=self.train, **self.augmentation
            )
        else:
            kwargs = {"do_train_augmentation": True, **self.augmentation} if self.train else {}
            if self.modality == "visual":
                kwargs["load_audio_in_video"] = False
            if self.defer_normalization:
                kwargs["defer_normalization"] = True
            inputs = self.processor(videos=path, return_tensors="pt", **kwargs)
        return {key: value[0] for key, value in inputs.items()}


class MediaDataset(torch.utils.data.Dataset):
    """``path`` / ``label`` rows (or the ``video`` / ``audio`` and ``label`` rows of ``load_dataset("videofolder",
    ...)``) decoded by a ``MediaTransform`` on access, a file that fails replaced by the next.

    A torch dataset (not ``with_transform``) so that the ``Trainer`` keeps the columns with default
    ``TrainingArguments`` (``remove_unused_columns`` would drop ``path`` before decoding). A file that cannot be decoded
    is replaced by the next row that can (its neighbour in the listing: usually the same class), at most
    ``max_replacements`` times, and listed in the item's ``skipped`` (the collator gathers them), so a batch whose
    files all fail still gives a full batch instead of ending the run.
    """

    def __init__(self, rows: Dataset, transform: MediaTransform, max_replacements: int = 32) -> None:
        if isinstance(rows, DatasetDict):
            raise ValueError(
                f"MediaDataset takes one split (e.g. dataset['train']), not a DatasetDict of splits {sorted(rows)}"
            )
        if len(rows) == 0:
            raise ValueError("MediaDataset needs at least one row")
        self.column = _media_column(rows.column_names)
        feature = rows.features.get(self.column)
        if isinstance(feature, Video | Audio) and feature.decode:
            # The transform decodes the file itself: no torchcodec decoder per row, the {"bytes", "path"} value.
            rows = rows.cast_column(self.column, type(feature)(decode=False))
        self.rows, self.transform, self.max_replacements = rows, transform, max_replacements

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[str] = []
        for attempt in range(min(self.max_replacements, len(self.rows) - 1) + 1):
            row = self.rows[(index + attempt) % len(self.rows)]
            decoded = self.transform({self.column: [row[self.column]], "label": [row["label"]]})
            item = {key: values[0] for key, values in decoded.items()}
            error = item.pop("error")
            if error is None:
                item["skipped"] = skipped
                return item
            logger.warning("skipping unreadable file %s", error)
            skipped.append(error)
        raise RuntimeError(f"{len(skipped)} files in a row failed to decode (from row {index}): {'; '.join(skipped)}")


def _media_column(columns: Iterable[str]) -> str:
    """The column that holds the media of a row, or an error saying why there is none."""
    columns = list(columns)
    column = next((name for name in MEDIA_COLUMNS if name in columns), None)
    if column is None:
        raise ValueError(
            f"no media column ({', '.join(MEDIA_COLUMNS)}) in rows with columns {sorted(columns)}. With "
            "`dataset.with_transform(MediaTransform(...))`, the Trainer's `remove_unused_columns` (on by default) "
            "removes every column its model's forward does not take before the transform runs: give the Trainer "
            "`MediaDataset(dataset, MediaTransform(...))` instead, or `TrainingArguments(remove_unused_columns=False)`"
        )
    return column


def _media_name(value: Any) -> str:
    """What an error about a row's media calls it: its path when known."""
    encoded = getattr(value, "_hf_encoded", value)
    if isinstance(encoded, dict):
        return str(encoded.get("path") or "<bytes>")
    return str(value)


class AVBertDataCollator:
    """Stacks decoded rows into a model batch, dropping (and reporting) the rows whose file could not be decoded.

    ``skipped`` keeps every "PATH: reason" seen in this process. With ``report_skipped=True`` the batch also carries
    them as ``skipped_files`` (a list, for the Trainer subclasses of ``avbert.training``, which take it out before the
    forward): DataLoader workers are other processes, so their ``skipped`` never reaches the main one. Rows of
    ``MediaDataset`` bring the files replaced before them; a ``with_transform`` row brings its own ``error``. A batch
    in which every row failed (only possible without ``MediaDataset``) raises. uint8 ``pixel_values`` (from
    ``MediaTransform(defer_normalization=True)``) stay uint8, with their ``clip_jitter`` when the rows have one.
    """

    def __init__(self, report_skipped: bool = False) -> None:
        self.skipped: list[str] = []
        self.report_skipped = report_skipped

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        good, skipped = [], []
        for row in features:
            skipped += row.get("skipped") or []
            if row.get("error"):
                logger.warning("skipping unreadable file %s", row["error"])
                skipped.append(row["error"])
            else:
                good.append(row)
        self.skipped += skipped
        if not good:
            errors = "; ".join(str(row["error"]) for row in features)
            raise RuntimeError(f"every file of a batch of {len(features)} failed to decode: {errors}")
        batch: dict[str, Any] = {"labels": torch.tensor([int(row["labels"]) for row in good], dtype=torch.long)}
        for key in ("pixel_values", "input_features", "clip_jitter"):
            if good[0].get(key) is not None:
                batch[key] = torch.stack([row[key] for row in good])
        if self.report_skipped:
            batch["skipped_files"] = skipped
        return batch
