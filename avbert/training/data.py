"""Datasets of media files for fine-tuning AVBERT: file lists, lazy decoding and batching.

Data flows one way: files -> ``datasets.Dataset`` rows (``path``, ``label``) -> decoding in ``with_transform``
(``MediaTransform``, run in the DataLoader workers) -> ``AVBertDataCollator`` -> model.

Why plain string paths instead of ``datasets.Video()`` / ``Audio()``: in datasets 5.x those features decode through
torchcodec into a decoder without the sound (rows of such datasets are accepted too); AVBERT's processors decode with
PyAV (``avbert.media_decoding``) and need the file itself (one demux pass for frames and sound). Decoding happens per
row on ``__getitem__``, so nothing is decoded twice or held in memory, and an unreadable file becomes an ``error`` on
its row instead of stopping a run of many hours: the collator drops such rows and says which files they were.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from datasets import ClassLabel, Dataset, Features, Value

from avbert.media_decoding import MediaDecodeError, as_media_source, read_audio

logger = logging.getLogger(__name__)

__all__ = ["LAYOUTS", "AVBertDataCollator", "MediaTransform", "load_media_dataset"]

# The model inputs each modality produces.
MODALITIES = {
    "audio-visual": ("pixel_values", "input_features"),
    "visual": ("pixel_values",),
    "audio": ("input_features",),
}
_ESC50_NAME = re.compile(r"^(?P<fold>\d+)-(?P<source>[^-]+)-(?P<take>[^-]+)-(?P<target>\d+)$")
_ESC50_SUFFIXES = (".wav", ".flac")
_TABLE_SPLITS = ("train", "validation", "val", "test")

# A file list: (media paths, label indices, class names in label-index order).
FileList = tuple[list[Path], list[int], list[str]]


# ---------------------------------------------------------------------------------------------------------------------
# File lists


def _require_dir(path: Path, what: str) -> Path:
    """Fail early, naming the folder: a missing one would otherwise surface as an empty dataset, far from its cause."""
    if not path.is_dir():
        raise ValueError(f"{what} not found: {path} is not a directory")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}")
    return path


def _visible_files(folder: Path) -> list[Path]:
    """Every regular, non-hidden file under ``folder``, sorted (the original's ``sorted(glob)`` order)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_split(split: str, allowed: Iterable[str], layout: str) -> None:
    if split not in allowed:
        raise ValueError(f"layout {layout!r} has splits {sorted(allowed)}, not {split!r}")


def _ucf101(data_dir: Path, split: str, split_id: int) -> FileList:
    """UCF101: ``classInd.txt`` gives "k Name" (label k - 1); the split lists give "Class/v_x.avi [k]" per line."""
    _check_split(split, ("train", "test"), "ucf101")
    splits = _require_dir(data_dir / "splits", "UCF101 split folder")
    class_ind = _require_file(splits / "classInd.txt", "UCF101 class index")
    names_by_index: dict[int, str] = {}
    for line in class_ind.read_text().splitlines():
        if line.strip():
            index, name = line.split()
            names_by_index[int(index) - 1] = name
    names = [names_by_index[i] for i in range(len(names_by_index))]
    label_of = {name: i for i, name in enumerate(names)}
    split_file = _require_file(splits / f"{split}list0{split_id}.txt", f"UCF101 {split} list for split {split_id}")
    paths, labels = [], []
    for line in split_file.read_text().splitlines():
        if not line.strip():
            continue
        relative = line.split()[0]
        class_name = relative.split("/")[0]
        if class_name not in label_of:
            raise ValueError(f"{split_file}: class {class_name!r} of {relative!r} is not in {class_ind}")
        paths.append(data_dir / relative)
        labels.append(label_of[class_name])
    _require_existing(paths, split_file)
    return paths, labels, names


def _esc50(data_dir: Path, split: str, split_id: int) -> FileList:
    """ESC-50: ``{fold}-{id}-{take}-{target}`` names; the test split is fold ``split_id``, train the other folds.

    The class range comes from every file (all folds), so train and test get the same ``ClassLabel``.
    """
    _check_split(split, ("train", "test"), "esc50")
    audio = _require_dir(data_dir / "audio", "ESC-50 audio folder")
    files = [p for p in _visible_files(audio) if p.suffix.lower() in _ESC50_SUFFIXES]
    parsed = []
    for path in files:
        match = _ESC50_NAME.match(path.stem)
        if match is None:
            raise ValueError(f"{path}: not an ESC-50 file name ({{fold}}-{{id}}-{{take}}-{{target}}.wav)")
        parsed.append((path, int(match["fold"]), int(match["target"])))
    names = _esc50_names(data_dir / "meta" / "esc50.csv", max((t for _, _, t in parsed), default=-1) + 1)
    rows = [(p, t) for p, fold, t in parsed if (fold == split_id) == (split == "test")]
    return [p for p, _ in rows], [t for _, t in rows], names


def _esc50_names(meta: Path, num_targets: int) -> list[str]:
    """Category names from ``meta/esc50.csv`` when it is there (the original ignored it), else the target numbers."""
    names = [str(i) for i in range(num_targets)]
    if meta.is_file():
        with meta.open(newline="") as f:
            categories = {int(row["target"]): row["category"] for row in csv.DictReader(f)}
        names = [categories.get(i, str(i)) for i in range(max(num_targets, max(categories, default=-1) + 1))]
    return names


def _kinetics_sounds(data_dir: Path, split: str, split_id: int) -> FileList:
    """Kinetics-Sounds: ``{split}/<class>/*.mp4``, classes the sorted folder names, which must agree with train's."""
    split_dir = _require_dir(data_dir / split, f"Kinetics-Sounds {split!r} split folder")
    names = [p.name for p in _class_dirs(split_dir)]
    train_dir = data_dir / "train"
    if split != "train" and train_dir.is_dir() and (train_names := [p.name for p in _class_dirs(train_dir)]) != names:
        raise ValueError(
            f"the classes of {split_dir} differ from those of {train_dir} (labels would not match): "
            f"only in {split}: {sorted(set(names) - set(train_names))}, "
            f"only in train: {sorted(set(train_names) - set(names))}"
        )
    paths, labels = [], []
    for label, class_dir in enumerate(_class_dirs(split_dir)):
        videos = sorted(class_dir.rglob("*.mp4"))
        paths += videos
        labels += [label] * len(videos)
    return paths, labels, names


def _folder(data_dir: Path, split: str, split_id: int) -> FileList:
    """Any ``<class>/<file>`` tree, under ``data_dir/split`` when that folder exists (as datasets' ``videofolder``)."""
    root = data_dir / split if (data_dir / split).is_dir() else _require_dir(data_dir, "dataset folder")
    class_dirs = _class_dirs(root)
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = _visible_files(class_dir)
        paths += files
        labels += [label] * len(files)
    return paths, labels, [p.name for p in class_dirs]


def _table(data_dir: Path, split: str, split_id: int, suffixes: tuple[str, ...] = (".csv",)) -> FileList:
    """A CSV / JSON file of ``path``, ``label`` rows, or a folder holding ``{split}.csv`` / ``{split}.json``.

    Labels are class names (the classes are then the sorted names found in this file and its sibling split files,
    so that every split gets the same ``ClassLabel``) or all integers (class names "0", "1", ...).
    """
    file = data_dir if data_dir.is_file() else _split_table(data_dir, split, suffixes)
    rows = _read_table(file)
    siblings = [file.with_name(f"{name}{file.suffix}") for name in _TABLE_SPLITS]
    all_labels = [label for _, label in rows]
    for sibling in siblings:
        if sibling.is_file() and sibling != file:
            all_labels += [label for _, label in _read_table(sibling)]
    names = _table_class_names(all_labels, file)
    label_of = {name: i for i, name in enumerate(names)}
    paths = [file.parent / path for path, _ in rows]
    labels = [label_of[_label_name(label)] for _, label in rows]
    _require_existing(paths, file)
    return paths, labels, names


def _label_name(label: str | int) -> str:
    """``7``, ``"7"`` and ``" 7 "`` name the same class."""
    text = str(label).strip()
    return str(int(text)) if text.lstrip("-").isdigit() else text


def _table_class_names(labels: list[str | int], file: Path) -> list[str]:
    names = [_label_name(label) for label in labels]
    numbers = [int(name) for name in names if name.lstrip("-").isdigit()]
    if not numbers:
        return sorted(set(names))
    if len(numbers) != len(names):
        raise ValueError(f"{file}: the labels mix class numbers and class names (with its sibling split files)")
    if min(numbers) < 0:
        raise ValueError(f"{file}: negative class number {min(numbers)}")
    return [str(i) for i in range(max(numbers) + 1)]


def _split_table(folder: Path, split: str, suffixes: tuple[str, ...]) -> Path:
    for suffix in suffixes:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    raise ValueError(f"no {' or '.join(split + suffix for suffix in suffixes)} in {folder}")


def _read_table(file: Path) -> list[tuple[str, str | int]]:
    """``(path, label)`` rows of a CSV (header ``path,label``), a JSON list of objects, or JSON lines."""
    if file.suffix.lower() == ".csv":
        with file.open(newline="") as f:
            records = list(csv.DictReader(f))
    else:
        text = file.read_text()
        try:
            records = (
                json.loads(text)
                if text.lstrip().startswith("[")
                else [json.loads(line) for line in text.splitlines() if line.strip()]
            )
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}: not valid JSON ({error})") from error
    rows = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or record.get("path") in (None, "") or record.get("label") in (None, ""):
            raise ValueError(f"{file}: row {number} needs a non-empty 'path' and 'label', got {record!r}")
        rows.append((str(record["path"]), record["label"]))
    return rows


def _require_existing(paths: list[Path], listed_in: Path) -> None:
    """A listed file that is missing is a broken download or a wrong folder; say so before training starts."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        examples = ", ".join(str(p) for p in missing[:3])
        raise ValueError(f"{len(missing)} of {len(paths)} files listed in {listed_in} do not exist, e.g. {examples}")


LAYOUTS: dict[str, Callable[[Path, str, int], FileList]] = {
    "ucf101": _ucf101,
    "esc50": _esc50,
    "kinetics-sounds": _kinetics_sounds,
    "folder": _folder,
    "csv": partial(_table, suffixes=(".csv",)),
    "json": partial(_table, suffixes=(".json", ".jsonl")),
}


def load_media_dataset(layout: str, data_dir: str | Path, split: str, split_id: int = 1) -> Dataset:
    """A ``Dataset`` with ``path`` (absolute file path) and ``label`` (``ClassLabel``) for one split of a layout.

    Layouts: "ucf101", "esc50", "kinetics-sounds", "folder", "csv" / "json" (``data_dir`` is then the file, or a folder
    holding ``{split}.csv``). ``split_id`` picks the UCF101 split list (1-3) or the ESC-50 test fold (1-5).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    data_dir = Path(data_dir).expanduser().absolute()
    if not data_dir.exists():
        raise ValueError(f"dataset path not found: {data_dir}")
    paths, labels, names = LAYOUTS[layout](data_dir, split, split_id)
    if not paths:
        raise ValueError(f"no media files for layout {layout!r}, split {split!r} (split_id {split_id}) in {data_dir}")
    features = Features({"path": Value("string"), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"path": [str(p) for p in paths], "label": labels}, features=features)


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and batching


class MediaTransform:
    """Decodes a batch of ``path`` / ``label`` rows for ``Dataset.with_transform``; runs in the DataLoader workers.

    A plain class holding only the processor (picklable), so it can be sent to spawned workers. A file that cannot be
    decoded does not raise: its row gets ``error = "PATH: reason"`` and ``None`` tensors, and the collator drops it,
    so one bad file among thousands costs one sample instead of the run.
    """

    def __init__(
        self, processor: Any, modality: str, train: bool, augmentation: Mapping[str, Any] | None = None
    ) -> None:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {sorted(MODALITIES)}, not {modality!r}")
        self.processor = processor
        self.modality = modality
        self.train = train
        # Extra processor arguments for training only (e.g. pretraining's per-clip jitter), so that they are not
        # saved with the processor and do not carry over into fine-tuning.
        self.augmentation = dict(augmentation or {}) if train else {}

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        keys = MODALITIES[self.modality]
        out: dict[str, list] = {
            "labels": [int(label) for label in batch["label"]],
            "error": [],
            **{key: [] for key in keys},
        }
        # `path` rows (load_media_dataset) or the `video` / `audio` column of a `datasets` folder (load_dataset(
        # "videofolder", ...)): torchcodec decoders or {"bytes", "path"} dicts, decoded here from their file.
        column = next(name for name in ("path", "video", "audio") if name in batch)
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
            inputs = self.processor(videos=path, return_tensors="pt", **kwargs)
        return {key: value[0] for key, value in inputs.items()}


def _media_name(value: Any) -> str:
    """What an error about a row's media calls it: its path when known."""
    encoded = getattr(value, "_hf_encoded", value)
    if isinstance(encoded, dict):
        return str(encoded.get("path") or "<bytes>")
    return str(value)


class AVBertDataCollator:
    """Stacks decoded rows into a model batch, dropping (and reporting) the rows whose file could not be decoded.

    ``skipped`` keeps every "PATH: reason" seen, so a training script can list them at the end. A batch in which every
    file failed raises: that is a data problem (wrong folder, missing codec), not bad luck.
    """

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        good = []
        for row in features:
            if row.get("error"):
                logger.warning("skipping unreadable file %s", row["error"])
                self.skipped.append(row["error"])
            else:
                good.append(row)
        if not good:
            errors = "; ".join(str(row["error"]) for row in features)
            raise RuntimeError(f"every file of a batch of {len(features)} failed to decode: {errors}")
        batch = {"labels": torch.tensor([int(row["labels"]) for row in good], dtype=torch.long)}
        for key in ("pixel_values", "input_features"):
            if good[0].get(key) is not None:
                batch[key] = torch.stack([row[key] for row in good])
        return batch
