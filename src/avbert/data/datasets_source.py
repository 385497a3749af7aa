"""A `datasets` dataset as the data of the training command lines, named as in transformers' example scripts.

    avbert-train --recipe kinetics-sounds --dataset_name videofolder --data_dir VIDEOS --model M --output_dir OUT

``--dataset_name`` is what ``datasets.load_dataset`` takes (a packaged loader such as ``videofolder`` /
``audiofolder`` reading ``--data_dir``, a local dataset folder or a Hub name), or a folder written by
``save_to_disk``. The media column (``--video_column_name``, ``--audio_column_name`` for the audio recipe) holds
``Video`` / ``Audio`` values (or path strings) and the label column a ``ClassLabel``, whose names are the classes.
Each split becomes the ``path`` / ``label`` rows that ``MediaDataset`` and ``MediaTransform`` read from the folder
layouts, with the media cast to ``decode=False``: a row is a ``{"bytes", "path"}`` dict, decoded (the sampled
frames, and the sound under each clip) only in the DataLoader workers, and a file that fails is skipped and reported
as for folders.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ..cli import UsageError

logger = logging.getLogger(__name__)

# One help text per flag, shared by avbert-train, avbert-evaluate and avbert-pretrain.
DATASET_HELP = {
    "dataset_name": "A `datasets` dataset instead of a --data_dir layout: a loader such as videofolder or audiofolder "
    "(reading --data_dir), a local dataset folder (load_dataset or save_to_disk) or a Hub name "
    "(docs/training.md, 'Training from a datasets dataset').",
    "dataset_config_name": "The dataset's configuration (load_dataset's `name`).",
    "video_column_name": "Column of the dataset's videos (Video values or paths).",
    "audio_column_name": "Column of the dataset's sounds (Audio values or paths), read by the audio recipe (esc50).",
    "label_column_name": "Column of the dataset's labels: a ClassLabel, whose names are the classes.",
}


@dataclasses.dataclass(frozen=True)
class Columns:
    """The dataset columns a command reads: the media (named by the flag ``media_flag``) and the labels (None:
    unlabeled, for pretraining)."""

    media_flag: str
    media: str
    label: str | None

    @classmethod
    def of(cls, args: Any, modality: str, labeled: bool = True) -> Columns:
        """The columns of parsed arguments: the audio recipe reads ``--audio_column_name``, the others
        ``--video_column_name``."""
        flag = "audio_column_name" if modality == "audio" else "video_column_name"
        return cls(flag, getattr(args, flag), args.label_column_name if labeled else None)


def load_source(dataset_name: str, config_name: str | None = None, data_dir: str | None = None) -> Any:
    """The ``DatasetDict`` of ``--dataset_name`` (``save_to_disk`` folders with ``load_from_disk``); a dataset that
    cannot be loaded is a one-line error naming it."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    saved = Path(dataset_name)
    try:
        if (saved / "dataset_dict.json").is_file() or (saved / "state.json").is_file():
            loaded = load_from_disk(dataset_name)
        else:
            loaded = load_dataset(dataset_name, config_name, data_dir=data_dir)
    except (OSError, ValueError) as error:  # DatasetNotFoundError is a FileNotFoundError
        problem = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"--dataset_name {dataset_name}: cannot load it ({problem})") from error
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def as_splits(dataset: Any, split_name: str = "train") -> Any:
    """A ``DatasetDict`` as it is; a single ``Dataset`` as the split ``split_name`` (the Python ``run`` APIs)."""
    from datasets import Dataset, DatasetDict

    if isinstance(dataset, DatasetDict):
        return dataset
    if isinstance(dataset, Dataset):
        return DatasetDict({split_name: dataset})
    raise TypeError(f"dataset must be a datasets.Dataset or DatasetDict, not {type(dataset).__name__}")


def media_rows(split: Any, split_name: str, columns: Columns) -> Any:
    """``path`` (the media, not decoded) and ``label`` (the ``ClassLabel``; a constant 0 for unlabeled columns)
    rows of one split; a missing column, a label column that is not a ``ClassLabel`` or an empty split is a one-line
    error naming it."""
    from datasets import Audio, ClassLabel, Video

    if len(split) == 0:
        raise UsageError(f"split {split_name!r} of the dataset has no rows")
    wanted = {columns.media_flag: columns.media}
    if columns.label is not None:
        wanted["label_column_name"] = columns.label
    for flag, column in wanted.items():
        if column not in split.column_names:
            raise UsageError(
                f"--{flag} {column}: split {split_name!r} has no such column (columns: {', '.join(split.column_names)})"
            )
    if columns.label is not None and not isinstance(split.features[columns.label], ClassLabel):
        raise UsageError(
            f"--label_column_name {columns.label}: the column of split {split_name!r} is "
            f"{type(split.features[columns.label]).__name__}, not a ClassLabel (the class names come from it; "
            "class_encode_column makes one)"
        )
    rows = split.select_columns(list(wanted.values()))
    feature = rows.features[columns.media]
    if isinstance(feature, (Video, Audio)) and feature.decode:
        # Rows then hold {"bytes", "path"}: opening a torchcodec decoder per row would read the file for nothing.
        rows = rows.cast_column(columns.media, dataclasses.replace(feature, decode=False))
    renames = {old: new for old, new in ((columns.media, "path"), (columns.label, "label")) if old not in (None, new)}
    rows = rows.rename_columns(renames)
    if columns.label is None:
        rows = rows.add_column("label", [0] * len(rows))
    return rows


def split_rows(splits: Any, split: str, split_flag: str, columns: Columns) -> Any:
    """The rows of one split; one the dataset does not have is a one-line error naming ``--split_flag``."""
    if split not in splits:
        raise UsageError(f"--{split_flag} {split}: the dataset has no such split (splits: {', '.join(splits)})")
    return media_rows(splits[split], split, columns)


def train_eval_rows(splits: Any, train_split: str, eval_split: str, columns: Columns) -> tuple[Any, Any]:
    """The train and eval rows, which must not share a file. A dataset with the train split only (a videofolder of
    ``<class>/`` folders) gets a seeded, stratified split, ``AUTO_SPLIT_TEST_FRACTION`` of each class for eval, as the
    folder layouts do."""
    from .folders import AUTO_SPLIT_TEST_FRACTION, auto_split_indices, check_disjoint

    if eval_split not in splits and list(splits) == [train_split]:
        rows = media_rows(splits[train_split], train_split, columns)
        logger.info(
            "the dataset has only the %r split: using a seeded stratified split, %.0f%% of each class for %r",
            train_split,
            100 * AUTO_SPLIT_TEST_FRACTION,
            eval_split,
        )
        labels = rows["label"]
        return rows.select(auto_split_indices(labels, test=False)), rows.select(auto_split_indices(labels, test=True))
    train = split_rows(splits, train_split, "train_split_name", columns)
    evaluation = split_rows(splits, eval_split, "eval_split_name", columns)
    if evaluation.features["label"].names != train.features["label"].names:
        raise UsageError(f"the {train_split} and {eval_split} splits have different classes")
    try:
        check_disjoint(train, evaluation, train_split, eval_split)
    except ValueError as error:
        raise UsageError(str(error)) from error
    return train, evaluation
