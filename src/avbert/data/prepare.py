"""``avbert-prepare``: download the original datasets (or take local copies), arranged for ``load_media_dataset``.

    avbert-prepare esc50 --output-dir data/esc50                 # downloads into data/esc50/downloads/ first
    avbert-prepare ucf101 --output-dir data/ucf101 --source ~/UCF101   # offline: an archive or an extracted folder
    avbert-prepare folder --output-dir data/mine --source ~/videos      # any tree of media -> <class>/<file> + CSV
    avbert-prepare check --source data/mine --recipe kinetics-sounds --output-dir data/check   # probe every file
    avbert-prepare shards data/mine data/mine-shards --shard-size 1GB  # WebDataset shards (see avbert.data.shards)
    avbert-prepare shards ~/videos data/pretrain-shards --unlabeled    # only files with video and sound (pretraining)
    avbert-prepare shards data/ks data/ks-shards --transcode kinetics-sounds --num-proc 8   # at the training geometry

The dataset is arranged in ``--output-dir`` itself (``<Class>/`` + ``splits/`` for UCF101, ``audio/`` + ``meta/`` for
ESC-50, ``train/`` + ``test/`` for Kinetics-Sounds), so that folder is what ``--data-dir`` of training takes.

Why downloading is separate from arranging: the archives are large (UCF101 6.5 GB) and the servers slow or gone, so
downloads resume with HTTP range requests, and every arranging function also takes an archive or folder the user got
some other way (``--source``), which is also what the tests use. Without network access the command stops at once
and says which file to fetch by hand.
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from ..cli import parse_size
from ..media_decoding import AudioTrack, MediaDecodeError, probe, read_video

__all__ = ["PrepareError", "arrange_esc50", "arrange_folder", "arrange_kinetics_sounds", "arrange_ucf101", "main"]

UCF101_URL = "https://www.crcv.ucf.edu/data/UCF101/UCF101.rar"
UCF101_SPLITS_ZIP = "UCF101TrainTestSplits-RecognitionTask.zip"
UCF101_SPLITS_URL = f"https://www.crcv.ucf.edu/data/UCF101/{UCF101_SPLITS_ZIP}"
ESC50_URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"
KINETICS_SOUNDS_DRIVE_ID = "1KYz08ikUemlqa6Gc0EkA31OH2GuSJnTS"
# drive.usercontent with confirm=t skips the "cannot scan this file for viruses" page that large files get.
KINETICS_SOUNDS_URL = (
    f"https://drive.usercontent.google.com/download?id={KINETICS_SOUNDS_DRIVE_ID}&export=download&confirm=t"
)
TIMEOUT_S = 30
_CHUNK = 1 << 20


class PrepareError(RuntimeError):
    """A problem the user has to fix (no network, missing tool, unexpected archive); the message says what to do."""


# ---------------------------------------------------------------------------------------------------------------------
# Downloading


def download(url: str, dest: Path, what: str) -> Path:
    """Fetch ``url`` to ``dest``, resuming a ``dest.part`` left by an interrupted run (HTTP range request)."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "avbert-prepare"} | ({"Range": f"bytes={offset}-"} if offset else {})
    manual = f"download {what} manually from {url} and pass --source PATH"
    print(f"downloading {what} from {url} to {dest}" + (f" (resuming at {offset} bytes)" if offset else ""))
    try:
        with urlopen(Request(url, headers=headers), timeout=TIMEOUT_S) as response:
            if "text/html" in response.headers.get("Content-Type", ""):
                raise PrepareError(f"{url} returned a web page instead of {what} (quota or sign-in?); {manual}")
            resumed = offset and response.status == 206  # a server that ignores Range sends the whole file: restart
            with part.open("ab" if resumed else "wb") as f:
                shutil.copyfileobj(response, f, _CHUNK)
    except HTTPError as error:
        if not (error.code == 416 and offset):  # 416 on a resume: the .part is already complete
            raise PrepareError(f"downloading {what} failed: HTTP {error.code} {error.reason}; {manual}") from error
    except URLError as error:
        raise PrepareError(f"no network access ({error.reason}): {manual}") from error
    except (TimeoutError, ConnectionError) as error:
        raise PrepareError(f"download of {what} interrupted ({error}); run again to resume, or {manual}") from error
    part.rename(dest)
    return dest


# ---------------------------------------------------------------------------------------------------------------------
# Placing files


def _place(src: Path, dest: Path, mode: str) -> None:
    """Put ``src`` at ``dest`` by "move" (our own extracted archive), "link" (a user's folder, no copy) or "copy"."""
    if dest.exists() or dest.is_symlink():
        raise PrepareError(f"{dest} already exists; remove it or choose another --output-dir")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if mode == "move":
        shutil.move(src, dest)
    elif mode == "link":
        dest.symlink_to(src.absolute(), target_is_directory=src.is_dir())
    elif src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copy2(src, dest)


def _extract_zip(archive: Path, staging: Path) -> Path:
    """Extract once into ``staging`` (a marker file says it finished, so a rerun does not extract again)."""
    done = staging / ".extracted"
    if not done.is_file():
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(staging)
        except zipfile.BadZipFile as error:
            message = f"{archive} is not a valid zip archive ({error}); delete it and download it again"
            raise PrepareError(message) from error
        done.touch()
    return staging


def _extract_rar(archive: Path, staging: Path) -> Path:
    """UCF101 is a RAR; ``rarfile`` (plus an unrar tool) is optional, so say how to do without it."""
    if importlib.util.find_spec("rarfile") is None:
        raise PrepareError(
            f"{archive} is a RAR archive and the 'rarfile' module is not installed: extract it yourself "
            f"(e.g. `unrar x {archive}`) and pass the extracted folder as --source, or `pip install rarfile`"
        )
    import rarfile

    done = staging / ".extracted"
    if not done.is_file():
        try:
            with rarfile.RarFile(archive) as rf:
                rf.extractall(staging)
        except rarfile.Error as error:
            message = f"cannot extract {archive} ({error}); extract it yourself and pass --source FOLDER"
            raise PrepareError(message) from error
        done.touch()
    return staging


def _unpack(source: Path, staging: Path) -> tuple[Path, str]:
    """A folder as it is (linked or copied later), or an archive extracted into ``staging`` (moved later)."""
    if source.is_dir():
        return source, "link"
    if not source.is_file():
        raise PrepareError(f"--source {source} does not exist")
    if source.suffix.lower() == ".rar":
        return _extract_rar(source, staging), "move"
    return _extract_zip(source, staging), "move"


def _find_dir(root: Path, wanted: Callable[[Path], bool], what: str, depth: int = 3) -> Path:
    """The first folder at or below ``root`` (breadth first, ``depth`` levels) that looks like ``what``."""
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            if wanted(folder):
                return folder
        level = sorted(child for folder in level for child in folder.iterdir() if child.is_dir())
    raise PrepareError(f"no {what} found in {root}")


# ---------------------------------------------------------------------------------------------------------------------
# Arranging (offline)


def arrange_esc50(source: Path, output_dir: Path, copy: bool = False) -> Path:
    """ESC-50 (``ESC-50-master.zip`` or its extracted folder) -> ``output_dir/{audio,meta}``."""
    root, mode = _unpack(source, output_dir / "downloads" / "esc50")
    found = _find_dir(root, lambda d: (d / "audio").is_dir(), "ESC-50 'audio' folder")
    mode = "copy" if copy and mode == "link" else mode
    for name in ("audio", "meta"):
        if (found / name).is_dir():
            _place(found / name, output_dir / name, mode)
    return output_dir


def arrange_ucf101(source: Path, output_dir: Path, splits_source: Path | None = None, copy: bool = False) -> Path:
    """UCF101 (``UCF101.rar`` or the extracted ``UCF-101`` folder) + its split lists -> ``<Class>/`` + ``splits/``.

    The split lists come from ``splits_source`` (the zip or its folder), or are looked for inside ``source``.
    """
    root, mode = _unpack(source, output_dir / "downloads" / "ucf101")
    videos = _find_dir(root, _is_ucf101_video_root, "UCF101 class folders (<Class>/v_*.avi)")
    splits_root = root
    if splits_source is not None:
        splits_root, _ = _unpack(splits_source, output_dir / "downloads" / "ucf101-splits")
    splits = _find_dir(splits_root, lambda d: (d / "classInd.txt").is_file(), "UCF101 split lists (classInd.txt)")
    mode = "copy" if copy and mode == "link" else mode
    for class_dir in sorted(d for d in videos.iterdir() if d.is_dir()):
        _place(class_dir, output_dir / class_dir.name, mode)
    (output_dir / "splits").mkdir(parents=True, exist_ok=True)
    for split_file in sorted(splits.glob("*.txt")):
        shutil.copy2(split_file, output_dir / "splits" / split_file.name)
    return output_dir


def _is_ucf101_video_root(folder: Path) -> bool:
    return any(next(child.glob("v_*.avi"), None) for child in folder.iterdir() if child.is_dir())


def arrange_kinetics_sounds(source: Path, output_dir: Path, copy: bool = False) -> Path:
    """Kinetics-Sounds (``kinetics-sounds.zip`` or its extracted folder) -> ``output_dir/{train,test}/<class>/``."""
    root, mode = _unpack(source, output_dir / "downloads" / "kinetics-sounds")
    found = _find_dir(root, lambda d: (d / "train").is_dir() and (d / "test").is_dir(), "'train' and 'test' folders")
    mode = "copy" if copy and mode == "link" else mode
    for name in ("train", "val", "test"):
        if (found / name).is_dir():
            _place(found / name, output_dir / name, mode)
    return output_dir


@dataclass
class FolderReport:
    """What ``arrange_folder`` did: files kept (relative dataset paths) and files skipped, with the reason."""

    kept: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _media_problem(path: Path) -> str | None:
    """Why ``path`` is not usable media, or ``None``: probing now beats a decode error in hour three of training."""
    try:
        info = probe(path)
    except MediaDecodeError as error:
        return str(error).removeprefix(f"{path}: ")
    if info.video is None and info.audio is None:
        return "no video or audio stream"
    return None


def arrange_folder(source: Path, output_dir: Path, copy: bool = False) -> FolderReport:
    """Any tree of media -> ``output_dir/<class>/<file>`` (class = the file's parent folder) + ``dataset.csv``.

    Files that are not readable media, or that sit directly in ``source`` (no class folder), are skipped and
    reported, never dropped silently. Links by default; ``copy=True`` copies.
    """
    if not source.is_dir():
        raise PrepareError(f"--source {source} is not a folder")
    files = sorted(
        p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".") and output_dir not in p.parents
    )
    report = FolderReport()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(_media_problem, files))
    for path, problem in zip(files, problems, strict=True):
        relative = path.relative_to(source)
        if problem is None and len(relative.parts) < 2:
            problem = "not in a class folder (the class is the name of the file's folder)"
        if problem is not None:
            report.skipped.append((path, problem))
            continue
        label = path.parent.name
        name = path.name if len(relative.parts) == 2 else "__".join(relative.parts[1:])  # keep nested names apart
        _place(path, output_dir / label / name, "copy" if copy else "link")
        report.kept.append((f"{label}/{name}", label))
    with (output_dir / "dataset.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(sorted(report.kept))  # the order of the "folder" layout
    return report


# ---------------------------------------------------------------------------------------------------------------------
# Checking

# The streams each recipe reads (the recipes module itself imports the Trainer: too heavy for a parser).
RECIPE_MODALITIES = {"ucf101": "visual", "esc50": "audio", "kinetics-sounds": "audio-visual"}


def decode_problem(path: Path, modality: str) -> str | None:
    """Why ``path`` cannot feed a recipe of ``modality``, or ``None``: it opens, has the streams the recipe reads,
    and its first, middle and last frames (and its whole sound track) decode."""
    try:
        if modality == "audio":
            return None if _decoded_samples(path) else "no audio samples"
        info = probe(path)
        if info.video is None:
            return "no video stream"
        if modality == "audio-visual" and info.audio is None:
            return "no audio stream (the recipe needs the sound)"
        read_video(path, lambda video: [0, video.num_frames // 2, max(video.num_frames - 1, 0)])
        if modality == "audio-visual" and not _decoded_samples(path):
            return "the audio stream decodes to no samples"
    except (MediaDecodeError, OSError, ValueError) as error:
        return str(error).removeprefix(f"{path}: ")
    return None


def _decoded_samples(path: Path) -> int:
    """Decode the whole sound track, as ``read_audio`` does (with its errors), counting the samples and keeping none:
    memory is one decoded frame's, not the waveform's (``read_audio`` held it twice: 1 GB more on a 25-minute file)."""
    return sum(chunk.shape[1] for chunk in AudioTrack(path).chunks())


def check_media(source: Path, modality: str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Probe and decode every file under ``source``: the good media files and the bad files with their reasons."""
    from .folders import media_files  # datasets and torch: only for this command

    if not source.is_dir():
        raise PrepareError(f"--source {source} is not a folder")
    files, bad = media_files(source)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(lambda path: decode_problem(path, modality), files))
    good = [path for path, problem in zip(files, problems, strict=True) if problem is None]
    bad += [(path, problem) for path, problem in zip(files, problems, strict=True) if problem is not None]
    return good, sorted(bad)


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def _prepare_esc50(args: argparse.Namespace) -> None:
    source = args.source or download(ESC50_URL, args.output_dir / "downloads" / "ESC-50-master.zip", "ESC-50")
    arrange_esc50(source, args.output_dir, copy=args.copy)


def _prepare_ucf101(args: argparse.Namespace) -> None:
    downloads = args.output_dir / "downloads"
    source = args.source or download(UCF101_URL, downloads / "UCF101.rar", "UCF101 (6.5 GB)")
    arrange_ucf101(source, args.output_dir, splits_source=_ucf101_splits(source, downloads), copy=args.copy)


def _ucf101_splits(source: Path, downloads: Path) -> Path | None:
    """The split lists: already inside ``source`` (None), their zip inside or next to it, or else a download."""
    if source.is_dir() and next(source.rglob("classInd.txt"), None) is not None:
        return None
    for folder in (source, source.parent):
        if (folder / UCF101_SPLITS_ZIP).is_file():
            return folder / UCF101_SPLITS_ZIP
    what = f"the UCF101 split lists ({UCF101_SPLITS_ZIP}; put it next to the --source)"
    return download(UCF101_SPLITS_URL, downloads / UCF101_SPLITS_ZIP, what)


def _prepare_kinetics_sounds(args: argparse.Namespace) -> None:
    what = f"Kinetics-Sounds (Google Drive file {KINETICS_SOUNDS_DRIVE_ID}, e.g. with `gdown`)"
    source = args.source or download(KINETICS_SOUNDS_URL, args.output_dir / "downloads" / "kinetics-sounds.zip", what)
    arrange_kinetics_sounds(source, args.output_dir, copy=args.copy)


def _prepare_folder(args: argparse.Namespace) -> None:
    if args.source is None:
        raise PrepareError("'folder' needs --source FOLDER (the tree of media files to arrange)")
    report = arrange_folder(args.source, args.output_dir, copy=args.copy)
    classes = len({label for _, label in report.kept})
    print(
        f"{len(report.kept)} files in {classes} classes -> {args.output_dir} (list: {args.output_dir / 'dataset.csv'})"
    )
    if report.skipped:
        print(f"skipped {len(report.skipped)} files:", file=sys.stderr)
        for path, reason in report.skipped:
            print(f"  {path}: {reason}", file=sys.stderr)


def _check(args: argparse.Namespace) -> int:
    if args.source is None:
        raise PrepareError("'check' needs --source FOLDER (the dataset to probe)")
    from .folders import NOT_MEDIA_SUFFIXES

    good, problems = check_media(args.source, RECIPE_MODALITIES[args.recipe])
    # A table, readme or image (e.g. the dataset.csv `avbert-prepare folder` writes) is not a bad media file:
    # training leaves it out, as here.
    not_media = [(path, reason) for path, reason in problems if path.suffix.lower() in NOT_MEDIA_SUFFIXES]
    bad = [(path, reason) for path, reason in problems if path.suffix.lower() not in NOT_MEDIA_SUFFIXES]
    if not_media:
        names = ", ".join(path.name for path, _ in not_media[:3])
        print(f"not media, left out as training leaves them out: {len(not_media)} file(s), e.g. {names}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    listing = args.output_dir / "bad_files.csv"
    with listing.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows((str(path), reason) for path, reason in bad)
    print(f"{len(good)} good files, {len(bad)} bad for the {args.recipe} recipe; list: {listing}")
    for path, reason in bad:
        print(f"  {path}: {reason}", file=sys.stderr)
    return 1 if bad else 0


_COMMANDS = {
    "ucf101": _prepare_ucf101,
    "esc50": _prepare_esc50,
    "kinetics-sounds": _prepare_kinetics_sounds,
    "folder": _prepare_folder,
    "check": _check,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avbert-prepare",
        description="Download AVBERT's datasets (or take local copies) and arrange them for training.",
        epilog="examples:\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dataset",
        choices=sorted([*_COMMANDS, "shards"]),
        help="a dataset to download and arrange, 'folder' (any tree of media), 'check' (probe every file) or "
        "'shards' (WebDataset shards; its own arguments: avbert-prepare shards --help)",
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="the dataset folder to create")
    parser.add_argument("--source", type=Path, help="an already downloaded archive or extracted folder (offline)")
    parser.add_argument("--copy", action="store_true", help="copy files from a --source folder instead of linking")
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPE_MODALITIES),
        default="kinetics-sounds",
        help="check: the streams this recipe needs (default %(default)s: video and sound)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``avbert-prepare``; returns the exit status (1 with a message on stderr for user errors; for
    ``check``, 1 when bad files were found)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["shards"]:  # its own arguments: SOURCE OUTPUT_DIR --shard-size ...
        return prepare_shards(argv[1:])
    args = _parser().parse_args(argv)
    args.output_dir = args.output_dir.expanduser().absolute()
    args.source = args.source.expanduser().absolute() if args.source else None
    try:
        status = _COMMANDS[args.dataset](args)
    except (PrepareError, ValueError) as error:
        print(f"avbert-prepare: error: {error}", file=sys.stderr)
        return 1
    if args.dataset == "check":
        return status
    if args.dataset != "folder":
        print(f"{args.dataset} ready in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _shards_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avbert-prepare shards",
        description="Write WebDataset tar shards of media files (bytes as they are) with their labels and a manifest.",
    )
    parser.add_argument("source", type=Path, help="a dataset folder (see --layout) or, with --unlabeled, any folder")
    parser.add_argument("output_dir", type=Path, help="an empty folder for shard-NNNNNN.tar and manifest.json")
    parser.add_argument("--shard-size", type=parse_size, default=parse_size("1GB"), help="bytes per shard (1GB)")
    parser.add_argument("--shard-samples", type=int, help="also close a shard at this many samples")
    parser.add_argument("--layout", default="folder", help="load_media_dataset layout of SOURCE (default: folder)")
    parser.add_argument(
        "--split",
        help="split of the layout (default: train; for a folder without split folders, every file: a split would hold "
        "back its test part)",
    )
    parser.add_argument("--split-id", type=int, default=1, help="UCF101 split / ESC-50 fold (default: 1)")
    parser.add_argument("--unlabeled", action="store_true", help="every video file under SOURCE, no labels")
    parser.add_argument(
        "--recipe",
        choices=("ucf101", "esc50", "kinetics-sounds"),
        help="leave out the files without the streams this recipe reads, probed and decoded as `avbert-prepare check "
        "--recipe` does (default: with --unlabeled, video and sound, what avbert-pretrain reads; else any readable "
        "media)",
    )
    parser.add_argument(
        "--transcode",
        choices=("ucf101", "esc50", "kinetics-sounds"),
        help="re-encode every file once at this recipe's training geometry (short side = its largest train scale, "
        "the frame rate its clip stride keeps, sound mono at the feature extractor's rate; a visual recipe drops the "
        "sound, an audio one keeps only it) and shard the re-encodings; the settings go into the manifest and "
        "training checks them (implies --recipe's probe for this recipe)",
    )
    parser.add_argument(
        "--processor",
        type=Path,
        help="--transcode: take the geometry from the processor saved in this model folder (default: the recipe's "
        "default processor)",
    )
    parser.add_argument("--num-proc", type=int, default=1, help="--transcode: ffmpeg processes at a time (default 1)")
    return parser


def prepare_shards(argv: Sequence[str]) -> int:
    """``avbert-prepare shards SOURCE OUT``: probe every file, write the usable ones, list the others with the reason.

    Usable: readable media; with ``--recipe`` or ``--unlabeled`` (pretraining: video and sound), also holding the
    streams the training reads (`decode_problem`), so that no shard carries a sample every epoch then skips."""
    from .folders import _TABLE_SPLITS, _class_tree, find_media_files, load_media_dataset
    from .shards import MANIFEST_NAME, check_output_dir, write_shards  # webdataset and torch: only for this command

    args = _shards_parser().parse_args(argv)
    source = args.source.expanduser().absolute()
    output_dir = args.output_dir.expanduser().absolute()
    if args.transcode is not None and args.recipe not in (None, args.transcode):
        print(
            f"avbert-prepare shards: error: --recipe {args.recipe} and --transcode {args.transcode} name different "
            "recipes: the shards are for one (give --transcode alone)",
            file=sys.stderr,
        )
        return 1
    recipe = args.recipe or args.transcode
    modality = RECIPE_MODALITIES[recipe] if recipe else "audio-visual" if args.unlabeled else None
    problem_of = _media_problem if modality is None else functools.partial(decode_problem, modality=modality)
    try:
        if args.unlabeled:
            files, labels, names, root = find_media_files(source), None, None, source
        elif (
            args.split is None
            and args.layout == "folder"
            and source.is_dir()
            and not any((source / split).is_dir() for split in _TABLE_SPLITS)
        ):
            (files, labels, names), root = _class_tree(source), source
        else:
            rows = load_media_dataset(args.layout, source, args.split or "train", args.split_id)
            files, labels, names = [Path(p) for p in rows["path"]], list(rows["label"]), rows.features["label"].names
            root = source if source.is_dir() else source.parent
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            problems = list(pool.map(problem_of, files))
        keep = [i for i, problem in enumerate(problems) if problem is None]
        skipped = [(files[i], problem) for i, problem in enumerate(problems) if problem is not None]
        check_output_dir(output_dir)
        kept, transcode = [files[i] for i in keep], None
        with tempfile.TemporaryDirectory(prefix=".transcoding-", dir=output_dir) as scratch:
            if args.transcode is not None:
                kept, keep, transcode = _transcode(args, kept, keep, Path(scratch), skipped)
            if not keep:
                needs = "readable media" if modality is None else f"usable for {modality} training"
                reasons = "; ".join(f"{path.name}: {problem}" for path, problem in skipped[:3])
                raise ValueError(f"none of the {len(files)} files under {source} is {needs} (e.g. {reasons})")
            manifest = write_shards(
                kept,
                [labels[i] for i in keep] if labels is not None else None,
                output_dir,
                class_names=names,
                shard_size=args.shard_size,
                shard_samples=args.shard_samples,
                root=root if all(root in f.parents for f in files) else None,
                skipped=skipped,
                sources=[files[i] for i in keep],
                transcode=transcode,
            )
    except ValueError as error:
        print(f"avbert-prepare shards: error: {error}", file=sys.stderr)
        return 1
    total = sum(shard.num_bytes for shard in manifest.shards)
    if manifest.transcode is not None:
        print(f"re-encoded for {args.transcode}: {json.dumps(manifest.transcode)}")
    print(
        f"{manifest.num_samples} samples in {len(manifest.shards)} shards ({total / 1e6:.1f} MB) -> {args.output_dir}"
        f" (manifest: {args.output_dir / MANIFEST_NAME})"
    )
    if skipped:
        print(f"skipped {len(skipped)} files (listed in the manifest with the reason):", file=sys.stderr)
        for path, reason in skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
    return 0


def _transcode(
    args: argparse.Namespace, files: list[Path], keep: list[int], scratch: Path, skipped: list[tuple[Path, str]]
) -> tuple[list[Path], list[int], dict]:
    """Re-encode ``files`` (indices ``keep``) for ``--transcode``: the re-encodings that worked and their indices, and
    the settings; the files that failed are added to ``skipped`` (the manifest lists them, the command prints them)."""
    from .transcode import TranscodeSettings, default_processors, transcode_files

    modality = RECIPE_MODALITIES[args.transcode]
    try:
        processors = default_processors(modality, args.processor)
    except OSError as error:
        raise ValueError(f"--processor {args.processor}: no saved AVBERT processor there ({error})") from error
    settings = TranscodeSettings.for_recipe(args.transcode, modality, *processors)
    outputs, failed = transcode_files(files, settings, scratch, args.num_proc)
    skipped += failed
    done = [i for i, output in enumerate(outputs) if output is not None]
    return [outputs[i] for i in done], [keep[i] for i in done], settings.to_dict()
