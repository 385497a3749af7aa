"""Sources of media files for fine-tuning and pretraining: class folders, the prepared UCF101 / ESC-50 /
Kinetics-Sounds layouts, CSV / JSON tables, unlabeled folders, and the checks on splits.

Every source is a ``datasets.Dataset`` of plain string paths (``path``, ``label``), decoded later, per row, by the
training transform (``avbert.data.transform``). Why plain string paths instead of ``datasets.Video()`` / ``Audio()``:
in datasets 5.x those features decode through torchcodec into a decoder without the sound (rows of such datasets are
accepted too); AVBERT's processors decode with PyAV (``avbert.media_decoding``) and need the file itself (its frames
and its sound).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Value

from ..media_decoding import MediaDecodeError, probe

logger = logging.getLogger(__name__)

__all__ = [
    "LAYOUTS",
    "check_disjoint",
    "find_media_files",
    "load_media_dataset",
    "media_files",
    "stratified_subset",
    "unlabeled_dataset",
]

_ESC50_NAME = re.compile(r"^(?P<fold>\d+)-(?P<source>[^-]+)-(?P<take>[^-]+)-(?P<target>\d+)$")
_ESC50_SUFFIXES = (".wav", ".flac")
_TABLE_SPLITS = ("train", "validation", "val", "test")


def _suffixes(names: str) -> frozenset[str]:
    return frozenset(f".{name}" for name in names.split())


# Containers FFmpeg (through PyAV) demuxes that hold video and/or sound. A file with another suffix is probed; one whose
# suffix says text, image or subtitles never is (FFmpeg would read a readme.txt as ANSI art "video", a .jpg as 1 frame).
MEDIA_SUFFIXES = _suffixes(
    "mp4 m4v mov qt mkv mk3d webm avi flv f4v wmv asf mpg mpeg m2v ts m2ts mts 3gp 3g2 ogv ogg mxf vob dv nut y4m divx "
    "rm rmvb "  # video containers
    "wav flac mp3 m4a aac opus oga wma aif aiff caf au mka ac3 amr wv"  # sound
)
NOT_MEDIA_SUFFIXES = _suffixes(
    "txt md rst csv tsv json jsonl yaml yml xml html htm pdf nfo log ini cfg py sh zip tar gz rar 7z srt vtt ass ssa "
    "sub idx sbv jpg jpeg png gif bmp tif tiff webp heic svg ico pth pyth pt safetensors npy npz part tmp"
)
# Layouts without split folders or split files get a seeded, stratified split with this share of each class in test.
AUTO_SPLIT_TEST_FRACTION = 0.2
AUTO_SPLIT_SEED = 0

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


def media_files(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The media files under ``folder`` (recursive, hidden parts left out, sorted) and the files left out, each with
    its reason. A known media suffix is taken as it is (decoding errors come later, per file); a text, image or
    subtitle suffix never is; any other file is probed and kept when FFmpeg finds a video or sound stream in it."""
    kept: list[Path] = []
    dropped: list[tuple[Path, str]] = []
    for path in _visible_files(folder):
        suffix = path.suffix.lower()
        if suffix in MEDIA_SUFFIXES:
            kept.append(path)
        elif suffix in NOT_MEDIA_SUFFIXES:
            dropped.append((path, f"not a media file ({suffix})"))
        else:
            try:
                info = probe(path)
            except MediaDecodeError as error:
                dropped.append((path, f"not readable media ({error.problem})"))
                continue
            if info.video is None and info.audio is None:
                dropped.append((path, "no video or sound stream"))
            else:
                kept.append(path)
    return kept, dropped


def _report_dropped(dropped: list[tuple[Path, str]], where: Path) -> None:
    """Every file left out is named with its reason (a warning each): a silent drop would shrink the dataset unseen."""
    if dropped:
        logger.warning("%d files under %s are not used:", len(dropped), where)
        for path, reason in dropped:
            logger.warning("  not used: %s: %s", path, reason)


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
    """Kinetics-Sounds: ``{split}/<class>/<video>`` (any container: Kinetics downloads are mp4, mkv and webm), classes
    the sorted folder names, which must agree with train's."""
    split_dir = _require_dir(data_dir / split, f"Kinetics-Sounds {split!r} split folder")
    names = [p.name for p in _class_dirs(split_dir)]
    train_dir = data_dir / "train"
    if split != "train" and train_dir.is_dir() and (train_names := [p.name for p in _class_dirs(train_dir)]) != names:
        raise ValueError(
            f"the classes of {split_dir} differ from those of {train_dir} (labels would not match): "
            f"only in {split}: {sorted(set(names) - set(train_names))}, "
            f"only in train: {sorted(set(train_names) - set(names))}"
        )
    paths, labels, _ = _class_tree(split_dir)
    return paths, labels, names


def _class_tree(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """The media files of every ``root/<class>/`` folder (recursive), labelled by the sorted class folder order."""
    class_dirs = _class_dirs(root)
    paths, labels, dropped = [], [], []
    for label, class_dir in enumerate(class_dirs):
        files, left_out = media_files(class_dir)
        paths += files
        labels += [label] * len(files)
        dropped += left_out
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES]  # not e.g. dataset.csv
    dropped += [(p, "not in a class folder") for p in sorted(loose)]
    _report_dropped(dropped, root)
    return paths, labels, [p.name for p in class_dirs]


def _folder(data_dir: Path, split: str, split_id: int) -> FileList:
    """Any ``<class>/<file>`` tree, under ``data_dir/split`` when that folder exists (as datasets' ``videofolder``).

    Without split folders, train and test are a seeded, stratified split of the tree (``AUTO_SPLIT_TEST_FRACTION`` of
    each class in test), so that they never share a file."""
    if (data_dir / split).is_dir():
        return _class_tree(data_dir / split)
    root = _require_dir(data_dir, "dataset folder")
    split_folders = [name for name in _TABLE_SPLITS if (root / name).is_dir()]
    if split_folders:
        raise ValueError(f"{root} has split folders {split_folders} but no {split!r} folder")
    paths, labels, names = _class_tree(root)
    return (*_auto_split(paths, labels, split, root), names)


def _auto_split(paths: list[Path], labels: list[int], split: str, where: Path) -> tuple[list[Path], list[int]]:
    """``split`` ("train" or "test") of the seeded, stratified split of `auto_split_indices`."""
    _check_split(split, ("train", "test"), f"folder without split folders ({where})")
    logger.info(
        "%s has no train/test split: using a seeded stratified split, %.0f%% of each class for test",
        where,
        100 * AUTO_SPLIT_TEST_FRACTION,
    )
    wanted = auto_split_indices(labels, split == "test")
    return [paths[i] for i in wanted], [labels[i] for i in wanted]


def auto_split_indices(labels: Iterable[int], test: bool) -> list[int]:
    """The rows (sorted) of the test (or train) part of a seeded, stratified split: per class, a random
    ``AUTO_SPLIT_TEST_FRACTION`` (at least one row when the class has two or more) is test, the rest train. Same
    labels, same split, every call."""
    labels = list(labels)
    rng = np.random.default_rng(AUTO_SPLIT_SEED)
    test_rows = set()
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    for label in sorted(by_class):
        members = by_class[label]
        count = min(len(members) - 1, max(1, round(AUTO_SPLIT_TEST_FRACTION * len(members))))
        test_rows.update(int(i) for i in rng.permutation(members)[:count])
    return [i for i in range(len(labels)) if (i in test_rows) == test]


def _table(data_dir: Path, split: str, split_id: int, suffixes: tuple[str, ...] = (".csv",)) -> FileList:
    """A CSV / JSON file of ``path``, ``label`` rows, or a folder holding ``{split}.csv`` / ``{split}.json``.

    Labels are class names (the classes are then the sorted names found in this file and its sibling split files,
    so that every split gets the same ``ClassLabel``) or all integers (class names "0", "1", ...).
    """
    file = data_dir if data_dir.is_file() else _split_table(data_dir, split, suffixes)
    rows = _read_table(file)
    siblings = [file.with_name(f"{name}{file.suffix}") for name in _TABLE_SPLITS]
    # One table that is not a split's own file (e.g. the dataset.csv of `avbert-prepare folder`): split it.
    auto_split = file.stem not in _TABLE_SPLITS
    all_labels = [label for _, label in rows]
    for sibling in siblings:
        if sibling.is_file() and sibling != file:
            all_labels += [label for _, label in _read_table(sibling)]
    names = _table_class_names(all_labels, file)
    label_of = {name: i for i, name in enumerate(names)}
    paths = [file.parent / path for path, _ in rows]
    labels = [label_of[_label_name(label)] for _, label in rows]
    _require_existing(paths, file)
    if auto_split:
        paths, labels = _auto_split(paths, labels, split, file)
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
    if not any((folder / f"{name}{suffix}").is_file() for name in _TABLE_SPLITS for suffix in suffixes):
        for suffix in suffixes:  # `avbert-prepare folder` writes one table for the whole dataset
            if (folder / f"dataset{suffix}").is_file():
                return folder / f"dataset{suffix}"
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


def stratified_subset(labels: Iterable[int], max_samples: int | None, seed: int = 0) -> list[int]:
    """Indices (sorted) of at most ``max_samples`` rows with every class in proportion (largest remainders), chosen at
    random within each class: the first N rows of a sorted listing would all be one class."""
    labels = list(labels)
    if max_samples is None or max_samples >= len(labels):
        return list(range(len(labels)))
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    classes = sorted(by_class)
    shares = [max_samples * len(by_class[c]) / len(labels) for c in classes]
    counts = [int(share) for share in shares]
    by_remainder = sorted(range(len(classes)), key=lambda i: (counts[i] - shares[i], i))
    for i in by_remainder[: max_samples - sum(counts)]:
        counts[i] += 1
    rng = np.random.default_rng(seed)
    chosen = [int(i) for c, n in zip(classes, counts, strict=True) for i in rng.permutation(by_class[c])[:n]]
    return sorted(chosen)


def check_disjoint(train: Dataset, test: Dataset, train_split: str = "train", test_split: str = "test") -> None:
    """Refuse a train and a test split that share files: the test accuracy would measure memory, not the model.

    Rows name their file by path, or hold a ``datasets`` media value (``{"bytes", "path"}``): embedded bytes are
    compared by content (a copy under another name is still the same sample), a path by the file it resolves to.
    """
    train_files, test_files = _file_keys(train), _file_keys(test)
    shared = sorted(train_files[key] for key in train_files.keys() & test_files.keys())
    if shared:
        examples = ", ".join(shared[:3])
        raise ValueError(
            f"the {train_split} and {test_split} splits share {len(shared)} files (e.g. {examples}); give them "
            "separate folders or files, or use a folder without split folders for a seeded stratified split"
        )


def _file_keys(rows: Dataset) -> dict[str, str]:
    """What identifies each row's file (a content hash for embedded bytes, else the resolved path) -> its name."""
    keys = {}
    for batch in rows.select_columns(["path"]).iter(batch_size=256):
        for value in batch["path"]:
            if isinstance(value, dict):
                data, name = value.get("bytes"), value.get("path")
                if data is not None:
                    keys["sha256:" + hashlib.sha256(data).hexdigest()] = str(name or "<bytes>")
                    continue
                value = name
            path = str(Path(value).resolve())
            keys[path] = path
    return keys


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and batching


def find_media_files(data_dir: str | Path) -> list[Path]:
    """Every media file under `data_dir` (recursive, hidden files and folders left out), sorted; the files left out
    (text, images, unreadable) are each reported with the reason."""

    root = Path(data_dir).expanduser().absolute()
    if not root.is_dir():
        raise ValueError(f"video folder not found: {root} is not a directory")
    files, dropped = media_files(root)
    for path, reason in dropped:
        logger.warning("not used: %s: %s", path, reason)
    if not files:
        raise ValueError(f"no video files under {root}")
    return files


def unlabeled_dataset(data_dir: str | Path) -> Dataset:
    """`path` rows with a constant `label` 0, so `MediaTransform` and the collator can be reused unchanged."""
    from datasets import Dataset, Features, Value

    paths = [str(p) for p in find_media_files(data_dir)]
    features = Features({"path": Value("string"), "label": Value("int64")})
    return Dataset.from_dict({"path": paths, "label": [0] * len(paths)}, features=features)
