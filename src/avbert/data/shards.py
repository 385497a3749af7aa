"""Sharded, streamed video corpora: WebDataset tar shards written by ``avbert-prepare shards`` and read by
``avbert-train`` / ``avbert-pretrain`` on any number of processes and DataLoader workers.

A shard is a plain POSIX tar (the WebDataset layout, readable by ``tar``, ``webdataset`` and ``datasets``'
``webdataset`` builder): per sample ``KEY.<ext>`` holds the media file's bytes exactly as they were (no re-encoding)
and ``KEY.json`` its label and source. ``manifest.json`` next to the shards lists every shard with its sample count,
size and SHA-256, the class names, and the files left out with the reason: unreadable ones, and with ``--recipe`` or
``--unlabeled`` (pretraining reads video and sound) the ones without the streams the training reads, such as WAV files
and silent videos for pretraining (probed and decoded by ``avbert-prepare check``'s `decode_problem`).

Reading (``ShardedVideoDataset``): local paths, ``http(s)://`` (with a read timeout and retries) and ``pipe:`` commands
given on the command line (how object stores are read; never from a manifest, whose entries must be files next to
it), streamed through ``tarfile`` with WebDataset's key grouping, every member's size bounded before it is read, the
labels checked and each shard's size, sample count and SHA-256 verified as it streams (docs/training.md, "What the
readers check"):

- Every (rank, DataLoader worker) pair is one *reader*; the shards are dealt to the readers once, balancing their
  sample counts, so the readers' parts are disjoint and together cover the corpus.
- Every reader yields the same number of samples per epoch, the smallest reader's count ``q``: distributed ranks then
  run the same number of steps (a rank with more would wait forever in an all-reduce). Shards of equal sample counts
  (``--shard-samples``) in a multiple of ranks x workers leave nothing out; otherwise the surplus of the larger
  readers (the samples at the end of their shuffled stream, so not the same ones every epoch) is left out of that epoch
  and reported once at start-up.
- Shuffling: the reader's shard order and a sample buffer (``shuffle_buffer``), both seeded by (seed, epoch, reader),
  so the stream of every reader is a function of the seed and the epoch only.
- Resume: because the streams are reproducible and the DataLoader takes the workers' batches in turn, the number of
  finished optimizer steps tells exactly which samples every reader has delivered. The training side
  (``avbert.training.shard_training.ShardTrainerMixin``) reads the checkpoint's step count and makes each reader skip
  its delivered samples without decoding them (their bytes are still read, to rebuild the shuffle buffer), instead of
  the ``Trainer`` decoding and discarding every finished batch.
  No finished sample is trained again, none is lost, provided the data layout (shards, ranks, workers, batch size,
  seed) is the checkpoint's; with another layout the resumed epoch starts over (epoch granularity) with a warning.
- Decoding happens in the DataLoader workers through the same ``MediaTransform`` as the folder datasets; a sample
  that does not decode is reported ("SHARD/KEY: reason") and dropped by the collator, as a bad file is.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import http.client
import io
import json
import logging
import math
import os
import random
import re
import shlex
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import torch.distributed as dist
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from transformers import TrainingArguments

from ..cli import parse_size
from .folders import MEDIA_SUFFIXES
from .transcode import check_transcode

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_NAME",
    "ShardManifest",
    "ShardReadError",
    "ShardReadOptions",
    "ShardSpec",
    "ShardedVideoDataset",
    "load_manifests",
    "shard_dataset",
    "write_shards",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "avbert-webdataset-1"
READER_STATE_NAME = "shard_reader.json"


# ---------------------------------------------------------------------------------------------------------------------
# Manifest


@dataclass
class ShardSpec:
    """One shard: where it is (relative to its manifest when written), how many samples, bytes and its SHA-256."""

    url: str
    num_samples: int
    num_bytes: int = 0
    sha256: str = ""
    # What messages call it: its manifest entry (set when read; not written). The url of a `pipe:` location is a
    # command, whose last path part would not name the shard.
    name: str = field(default="", compare=False, repr=False)

    @property
    def display_name(self) -> str:
        return self.name or self.url.rsplit("/", 1)[-1]


@dataclass
class ShardManifest:
    """What ``avbert-prepare shards`` wrote: the shards, the class names (None: unlabeled), the files left out and,
    for shards of re-encoded files (``--transcode``), how they were re-encoded (``TranscodeSettings.to_dict``)."""

    shards: list[ShardSpec]
    class_names: list[str] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    format: str = FORMAT
    transcode: dict[str, Any] | None = None
    location: str | None = field(default=None, compare=False)  # where it was read from, for messages; not saved

    @property
    def num_samples(self) -> int:
        return sum(shard.num_samples for shard in self.shards)

    def to_json(self) -> str:
        data = asdict(self)
        del data["location"]
        for shard in data["shards"]:
            del shard["name"]
        return json.dumps({**data, "num_samples": self.num_samples}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, location: str) -> ShardManifest:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r} is not {FORMAT!r}")
            shards = [ShardSpec(**shard) for shard in data["shards"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{location}: not an avbert shard manifest ({error})") from error
        transcode = data.get("transcode")
        if transcode is not None and not isinstance(transcode, dict):
            raise ValueError(f"{location}: transcode is not an object of transcode settings")
        return cls(
            shards=shards, class_names=data.get("class_names"), skipped=data.get("skipped", []), transcode=transcode
        )


class ShardReadError(ValueError):
    """A shard or manifest that cannot be read as its manifest says: unreachable, stalled, truncated, replaced, or a
    manifest entry that is refused. Training stops with this one-line message (``avbert-train: error: ...``)."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's exception reaches the main process as `ShardReadError("Caught ShardReadError in
        # DataLoader worker process N.\nOriginal Traceback ...\navbert...ShardReadError: MESSAGE")`: keep MESSAGE.
        if message.startswith("Caught ShardReadError"):
            message = message.rstrip().rsplit("\n", 1)[-1].split("ShardReadError: ", 1)[-1]
        super().__init__(message)


@dataclass(frozen=True)
class ShardReadOptions:
    """How shards and manifests are read (``--shard_timeout``, ``--shard_retries``, ``--shard_max_member_size``).

    Attributes:
        timeout: seconds an http(s) connection may go without a byte (connecting, the response's headers, every read
            of its body) before the read fails, naming the URL.
        retries: further attempts to open an http(s) shard or manifest that is unreachable, times out before its
            first byte or answers with a 5xx status (1 s, 2 s, ... apart); a stall in the middle of a shard is not
            retried (the samples before it have been delivered already), it stops the run.
        max_member_bytes: a tar member larger than this (its header's size) is not read: its sample is skipped and
            reported. Bounds the memory of a reader whatever the shard holds (a small ``.tar.gz`` can unpack to GiBs).
    """

    timeout: float = 60.0
    retries: int = 2
    max_member_bytes: int = 1 << 30


_HTTP_SCHEMES = ("http://", "https://")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_MAX_MANIFEST_BYTES = 64 << 20
_MAX_JSON_BYTES = 1 << 20  # a sample's KEY.json holds a label and a source path


def _is_url(location: str) -> bool:
    return bool(_SCHEME.match(location))


def _open_http(url: str, options: ShardReadOptions) -> BinaryIO:
    """An http(s) response whose every blocking step (connect, headers, each body read) times out after
    ``options.timeout`` s without data; opening is retried ``options.retries`` times on errors a retry can cure."""
    for attempt in range(options.retries + 1):
        try:
            return urllib.request.urlopen(url, timeout=options.timeout)
        except urllib.error.HTTPError as error:
            problem = f"HTTP {error.code} {error.reason}"
            if error.code < 500:
                raise ShardReadError(f"{url}: {problem}") from error
        except (OSError, http.client.HTTPException) as error:  # refused, unreachable, timed out, bad response
            reason = getattr(error, "reason", error)
            problem = f"no answer within {options.timeout:g} s" if isinstance(reason, TimeoutError) else str(reason)
        if attempt < options.retries:
            logger.warning("%s: %s; retrying (%d of %d)", url, problem, attempt + 1, options.retries)
            time.sleep(attempt + 1)
    attempts = f"{options.retries + 1} attempts" if options.retries else "1 attempt"
    raise ShardReadError(f"{url}: {problem} ({attempts}; --shard_timeout and --shard_retries set the patience)")


def _open_location(location: str, options: ShardReadOptions) -> BinaryIO:
    """Open a local path or URL for reading: http(s) with a read timeout, a local file directly, anything else
    (``pipe:`` commands from the command line, ``file:``) through ``webdataset.gopen``."""
    if location.startswith(_HTTP_SCHEMES):
        return _open_http(location, options)
    try:
        return wds.gopen(location, "rb") if _is_url(location) else open(location, "rb")
    except OSError as error:
        raise ShardReadError(f"{location}: not readable ({error.strerror or error})") from error


def _manifest_location(location: str) -> str:
    """A manifest file, or a folder / URL prefix holding ``manifest.json``; in a ``pipe:`` command, ``{}`` stands for
    the file name (``pipe:aws s3 cp s3://bucket/corpus/{} -``)."""
    if location.startswith("pipe:"):
        if "{}" not in location:
            raise ValueError(
                f"{location}: a pipe: location needs {{}} where the manifest's and the shards' file names go, e.g. "
                "'pipe:aws s3 cp s3://bucket/corpus/{} -'"
            )
        return location
    if location.endswith(".json"):
        return location
    return location.rstrip("/") + "/" + MANIFEST_NAME


def _shard_location(manifest: str, entry: Any) -> str:
    """Where a manifest's shard entry is: a relative path inside the manifest's folder, resolved against it.

    A manifest is data, possibly fetched from a server: a command (``pipe:``), a URL of any scheme, an absolute path
    or a path leaving the manifest's folder (``..``) is refused, naming the manifest and the entry. Commands and other
    places come only from the user's own command line (a ``pipe:`` location with ``{}``, or several manifests).
    """
    problem = None
    if not isinstance(entry, str) or not entry.strip():
        problem = "not a shard file name"
    elif _is_url(entry):
        problem = "a command or URL; a manifest lists shard files relative to itself"
    elif entry.startswith(("/", "\\", "~")) or "\\" in entry:
        problem = "an absolute path; a manifest lists shard files relative to itself"
    elif ".." in PurePosixPath(entry).parts:
        problem = "leaves the manifest's folder"
    elif any(ord(c) < 32 for c in entry):
        problem = "holds control characters"
    if problem is not None:
        raise ShardReadError(
            f"{manifest}: shard entry {entry!r} refused ({problem}). Commands (pipe:) and other locations belong on "
            "the command line (docs/training.md, Scale-out)"
        )
    if manifest.startswith("pipe:"):
        return manifest.replace("{}", shlex.quote(entry))
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    return f"{base}/{urllib.parse.quote(entry) if manifest.startswith(_HTTP_SCHEMES) else entry}"


def _read_manifest(location: str, options: ShardReadOptions) -> ShardManifest:
    """Read one manifest and resolve its shard entries against the manifest's own folder, URL or command."""
    location = _manifest_location(location)
    source = location.replace("{}", MANIFEST_NAME) if location.startswith("pipe:") else location
    try:
        with _open_location(source, options) as stream:
            raw = stream.read(_MAX_MANIFEST_BYTES + 1)
    except ShardReadError as error:
        raise ValueError(f"shard manifest not readable: {error}") from error
    except (OSError, ValueError, http.client.HTTPException) as error:  # a failing pipe, a stalled server
        raise ValueError(f"shard manifest not readable: {source} ({error})") from error
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise ValueError(f"{source}: over {_MAX_MANIFEST_BYTES >> 20} MiB, not an avbert shard manifest")
    manifest = ShardManifest.from_json(raw.decode(errors="replace"), source)
    for shard in manifest.shards:
        shard.url, shard.name = _shard_location(location, shard.url), shard.url
    names = manifest.class_names
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{source}: class_names is not a list of names")
    return manifest


def load_manifests(locations: str | Sequence[str], options: ShardReadOptions | None = None) -> ShardManifest:
    """One manifest for one or several corpora.

    ``locations``: manifest files, shard folders or URL prefixes; a string may list several, comma-separated, with
    brace patterns (``data/part-{0..3}``) and, for local paths, globs (``data/*/manifest.json``). A ``pipe:``
    command with ``{}`` for the file name reads from any object-store CLI. The class names of labeled corpora must
    agree.
    """
    options = options or ShardReadOptions()
    if isinstance(locations, str):
        locations = [part for part in locations.split(",") if part.strip()]
    expanded: list[str] = []
    for location in locations:
        for item in wds.shardlists.expand_urls(location.strip()):
            matches = [] if _is_url(item) or not glob.has_magic(item) else sorted(glob.glob(item))
            if glob.has_magic(item) and not _is_url(item) and not matches:
                raise ValueError(f"no shard manifests match {item}")
            expanded += matches or [item]
    if not expanded:
        raise ValueError("no shard manifest given")
    manifests = [_read_manifest(location, options) for location in expanded]
    names = {tuple(m.class_names) if m.class_names is not None else None for m in manifests}
    if len(names) > 1:
        raise ValueError(f"the shard manifests {expanded} have different class names")
    transcodes = {json.dumps(m.transcode, sort_keys=True) for m in manifests}
    if len(transcodes) > 1:
        raise ValueError(
            f"the shard manifests {expanded} hold files re-encoded with different settings (their 'transcode' "
            "entries, or some re-encoded and some not): write them with the same --transcode recipe"
        )
    return ShardManifest(
        shards=[shard for m in manifests for shard in m.shards],
        class_names=manifests[0].class_names,
        skipped=[item for m in manifests for item in m.skipped],
        transcode=manifests[0].transcode,
        location=", ".join(expanded),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Writing


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _tar_file_bytes(members: int) -> int:
    """The tar file's size: the members, two zero blocks, padded to tarfile's 10240-byte records."""
    return -(-(members + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def check_output_dir(output_dir: Path) -> None:
    """Create ``output_dir``, refusing one that holds shards already (before any work is spent on the files)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if any(output_dir.glob("shard-*.tar")) or (output_dir / MANIFEST_NAME).exists():
        raise ValueError(f"{output_dir} already holds shards; choose an empty output folder")


def write_shards(
    files: Sequence[Path],
    labels: Sequence[int] | None,
    output_dir: Path,
    class_names: Sequence[str] | None = None,
    shard_size: int = 1 << 30,
    shard_samples: int | None = None,
    root: Path | None = None,
    skipped: Sequence[tuple[Path, str]] = (),
    sources: Sequence[Path] | None = None,
    transcode: dict[str, Any] | None = None,
) -> ShardManifest:
    """Write ``files`` (already probed as readable) into ``shard-NNNNNN.tar`` in ``output_dir`` + ``manifest.json``.

    A shard is closed before its file would exceed ``shard_size`` bytes (a larger file gets a shard of its own) or
    when it holds ``shard_samples`` samples. Sample keys are the running index; ``KEY.json`` keeps the label, the
    class name and the source path (relative to ``root``): of ``sources[i]`` when ``files`` are re-encodings of
    them, whose settings ``transcode`` records in the manifest.
    """
    check_output_dir(output_dir)
    if labels is not None and len(labels) != len(files):
        raise ValueError(f"{len(files)} files but {len(labels)} labels")
    if sources is not None and len(sources) != len(files):
        raise ValueError(f"{len(files)} files but {len(sources)} sources")
    specs: list[ShardSpec] = []
    writer: wds.TarWriter | None = None
    path: Path | None = None
    count = size = 0
    overhead = 4096

    def close() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            specs.append(ShardSpec(path.name, count, path.stat().st_size, _sha256(path)))
            writer = None

    for index, file in enumerate(files):
        data = file.read_bytes()
        extension = file.suffix.lower().lstrip(".") or "bin"
        source = sources[index] if sources is not None else file
        meta: dict[str, Any] = {"source": str(source.relative_to(root) if root else source.name)}
        if labels is not None:
            meta["label"] = int(labels[index])
            if class_names is not None:
                meta["label_name"] = class_names[labels[index]]
        full = writer is not None and (
            _tar_file_bytes(size + len(data) + overhead) > shard_size
            or (shard_samples is not None and count >= shard_samples)
        )
        if full:
            close()
        if writer is None:
            path = output_dir / f"shard-{len(specs):06d}.tar"
            writer = wds.TarWriter(str(path))
            count = size = 0
        writer.write({"__key__": f"{index:09d}", extension: data, "json": meta})
        count += 1
        # The tar's own bytes per sample (headers, the json member, block padding), as written, for the next estimate.
        overhead = max(overhead, writer.tarstream.offset - size - len(data))
        size = writer.tarstream.offset
    close()
    manifest = ShardManifest(
        shards=specs,
        class_names=list(class_names) if class_names is not None else None,
        skipped=[{"path": str(p.relative_to(root) if root else p), "reason": reason} for p, reason in skipped],
        transcode=transcode,
    )
    (output_dir / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


# ---------------------------------------------------------------------------------------------------------------------
# Reading


class ShardMember(io.BytesIO):
    """A sample's media bytes, named "SHARD/KEY.ext" so that decode errors say which sample failed."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


class _VerifiedStream:
    """A shard's byte stream that hashes and counts what passes through it, so that the one read the training does
    also checks the shard against its manifest entry (size, SHA-256); a failing or stalled read names the shard."""

    def __init__(self, raw: BinaryIO, shard: ShardSpec, options: ShardReadOptions) -> None:
        self.raw, self.shard, self.options = raw, shard, options
        self.digest = hashlib.sha256()
        self.offset = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.raw.read(size)
        except TimeoutError as error:
            raise ShardReadError(
                f"{self.shard.url}: no data for {self.options.timeout:g} s after {self.offset} bytes (stalled "
                "server?); the run stops so that every rank keeps the same samples (--shard_timeout)"
            ) from error
        except (OSError, http.client.HTTPException) as error:  # e.g. IncompleteRead: the server closed early
            raise ShardReadError(f"{self.shard.url}: the read failed after {self.offset} bytes ({error!r})") from error
        self.digest.update(data)
        self.offset += len(data)
        return data

    def check_size(self, size: int | None) -> None:
        """Refuse a shard whose size (a local file's, an HTTP Content-Length) is not the manifest's, before reading."""
        if size is not None and self.shard.num_bytes and size != self.shard.num_bytes:
            raise ShardReadError(
                f"{self.shard.url}: {size} bytes, the manifest says {self.shard.num_bytes} (replaced or truncated "
                "shard?): restore it or write the shards and their manifest again"
            )

    def verify(self) -> None:
        """Read what the tar reader left (its end blocks) and compare the whole shard with the manifest."""
        while self.read(1 << 20):
            pass
        self.check_size(self.offset)
        if self.shard.sha256 and self.digest.hexdigest() != self.shard.sha256:
            raise ShardReadError(
                f"{self.shard.url}: SHA-256 {self.digest.hexdigest()} is not the manifest's {self.shard.sha256} "
                "(replaced or damaged shard): restore it or write the shards and their manifest again"
            )


def _open_shard(shard: ShardSpec, options: ShardReadOptions) -> _VerifiedStream:
    stream = _VerifiedStream(_open_location(shard.url, options), shard, options)
    if hasattr(stream.raw, "headers"):  # an HTTP response
        length = stream.raw.headers.get("Content-Length")
        declared = int(length) if length and length.isdigit() else None
    else:
        declared = os.fstat(stream.raw.fileno()).st_size if not _is_url(shard.url) else None
    try:
        stream.check_size(declared)
    except ShardReadError:
        stream.raw.close()
        raise
    return stream


def _is_media_member(extension: str) -> bool:
    return f".{extension.rsplit('.', 1)[-1]}" in MEDIA_SUFFIXES


def _shard_samples(shard: ShardSpec, options: ShardReadOptions) -> Iterator[dict[str, Any]]:
    """The samples of one shard in order: ``{"__key__", "__shard__", "members": {ext: bytes}, "problems": [...]}``.

    Only a sample's ``json`` and media members (by extension, ``MEDIA_SUFFIXES``) are read, and only those within
    the size limit (the tar header's size, checked before reading): anything else passes by unread, so a reader's
    memory is bounded by the limit whatever the shard holds. This is WebDataset's tar grouping (``base_plus_ext``
    keys) with those checks, which its ``tarfile_to_samples`` (every member read whole) cannot make. A shard that
    cannot be read to its end as its manifest entry says raises ``ShardReadError``.
    """
    stream = _open_shard(shard, options)
    count = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            sample: dict[str, Any] | None = None
            for info in tar:
                tar.members = []  # a streamed tar need not remember its members
                key, extension = wds.tariterators.base_plus_ext(info.name)
                if not info.isreg() or key is None:
                    continue
                extension = extension.lower()
                if sample is None or sample["__key__"] != key:
                    if sample is not None:
                        count += 1
                        yield sample
                    sample = {"__key__": key, "__shard__": shard.display_name, "members": {}, "problems": []}
                if extension != "json" and not _is_media_member(extension):
                    continue  # e.g. a caption: not the sample's media, not read
                limit, setting = (
                    (_MAX_JSON_BYTES, "of a KEY.json")
                    if extension == "json"
                    else (options.max_member_bytes, "(--shard_max_member_size)")
                )
                if extension in sample["members"]:
                    sample["problems"].append(f"{info.name} appears twice")
                elif info.size > limit:
                    sample["members"][extension] = None
                    sample["problems"].append(
                        f"{info.name} is {info.size} bytes, over the {limit}-byte limit {setting}; not read"
                    )
                else:
                    sample["members"][extension] = tar.extractfile(info).read()
            if sample is not None:
                count += 1
                yield sample
        if count != shard.num_samples:
            raise ShardReadError(
                f"{shard.url}: {count} samples read, the manifest says {shard.num_samples} (replaced or truncated "
                "shard?): restore it or write the shards and their manifest again"
            )
        stream.verify()
    except (EOFError, tarfile.TarError, zlib.error) as error:
        raise ShardReadError(
            f"{shard.url}: not a readable tar after {stream.offset} bytes ({error}; truncated or damaged shard?): "
            "restore it or write the shards and their manifest again"
        ) from error
    finally:
        stream.raw.close()


def _label(meta_bytes: bytes | None, key: str, class_names: Sequence[str] | None) -> tuple[int, str | None]:
    """A sample's class index from its ``KEY.json`` (0 when it has none), with the reason it has none; without class
    names (an unlabeled manifest) any index from 0."""
    if meta_bytes is None:
        return 0, f"no {key}.json (the sample's label)"
    try:
        meta = json.loads(meta_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return 0, f"{key}.json is not valid JSON ({error})"
    if not isinstance(meta, dict) or "label" not in meta:
        return 0, f"{key}.json has no label (an object with a 'label' class index)"
    label = meta["label"]
    if isinstance(label, bool) or not isinstance(label, int):
        return 0, f"label {str(json.dumps(label))[:40]} is not a class index"
    if class_names is None:
        return (label, None) if label >= 0 else (0, f"label {label} is not a class index")
    if not 0 <= label < len(class_names):
        return 0, f"label {label} is not one of the manifest's {len(class_names)} classes (0-{len(class_names) - 1})"
    name = meta.get("label_name")
    if name is not None and name != class_names[label]:
        return 0, f"label {label} is {class_names[label]!r} in the manifest but {str(name)[:40]!r} in {key}.json"
    return label, None


def _process_info() -> tuple[int, int]:
    """(rank, world size) of this process; torchrun's environment before the process group exists."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def deal_shards(counts: Sequence[int], num_readers: int) -> list[list[int]]:
    """Shard indices per reader: largest shards first, each to the reader with the fewest samples so far (ties: the
    lowest reader), so the readers' totals are as equal as the shard sizes allow. Deterministic."""
    if len(counts) < num_readers:
        raise ValueError(
            f"{len(counts)} shards cannot feed {num_readers} readers (ranks x DataLoader workers): use fewer "
            "DataLoader workers or write more, smaller shards"
        )
    readers: list[list[int]] = [[] for _ in range(num_readers)]
    totals = [0] * num_readers
    for index in sorted(range(len(counts)), key=lambda i: (-counts[i], i)):
        target = min(range(num_readers), key=lambda r: (totals[r], r))
        readers[target].append(index)
        totals[target] += counts[index]
    return [sorted(shards) for shards in readers]


class ShardedVideoDataset(IterableDataset):
    """Streams (decoded) samples of WebDataset shards; see the module docstring for the splitting and resume rules.

    Args:
        manifest: the shards (``load_manifests``).
        transform: a ``MediaTransform`` (called on ``{"path": [media], "label": [label]}``); None yields raw samples
            (``key``, ``media`` bytes, ``label``), e.g. to benchmark reading.
        batch_size: the per-device batch size the DataLoader uses (the resume arithmetic needs it).
        num_workers: the DataLoader's workers (0 = the main process reads).
        shuffle_buffer: samples held for shuffling; 0 or 1 reads the shards and their samples in order (eval).
        seed: seeds the shard order and the buffer, with the epoch.
        split_by_rank: False for evaluation: one reader list for every rank (``accelerate`` dispatches rank 0's
            batches), and every reader yields all its samples (no equal counts needed without an all-reduce).
        rank, world_size: this process's place (default: the process group's, or torchrun's environment).
        options: timeouts, retries and the member size limit of the reading (``ShardReadOptions``).

    What is checked as the shards are read: a sample without exactly one media member (by extension), with a member
    over the size limit, or (labeled corpora) without a valid label of the manifest's classes in ``KEY.json`` is
    skipped and reported as ``SHARD/KEY: reason`` (the collator drops it, as an undecodable file; its place in the
    stream still counts, so every rank keeps the same number of steps). A shard that is unreachable, stalls, is
    truncated, or whose size, sample count or SHA-256 is not its manifest entry's stops the run with a
    ``ShardReadError`` naming it: skipping it would leave its reader short and the ranks out of step.
    """

    def __init__(
        self,
        manifest: ShardManifest,
        transform: Any = None,
        batch_size: int = 1,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        split_by_rank: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        options: ShardReadOptions | None = None,
    ) -> None:
        super().__init__()
        if not manifest.shards:
            raise ValueError("the shard manifest lists no shards")
        if transform is not None:  # shards of re-encoded files must fit the processor that reads them
            check_transcode(manifest.transcode, transform, manifest.location or "the shard manifest")
        self.manifest = manifest
        self.transform = transform
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.options = options or ShardReadOptions()
        self.epoch = 0
        self.rank, self.world_size = _process_info() if split_by_rank else (0, 1)
        if rank is not None or world_size is not None:
            self.rank, self.world_size = rank or 0, world_size or 1
        self.readers = deal_shards([s.num_samples for s in manifest.shards], self.world_size * self.num_readers)
        totals = [sum(manifest.shards[i].num_samples for i in shards) for shards in self.readers]
        # Samples each reader yields per epoch: the same for all when ranks train together, else all they hold.
        self.quotas = [min(totals)] * len(totals) if split_by_rank else totals
        self.left_out = sum(totals) - sum(self.quotas)
        # Resume: in epoch `resume_epoch`, the first `resume_batches` batches (all readers of this rank) are done.
        self.resume_epoch: int | None = None
        self.resume_batches = 0
        if self.left_out and self.rank == 0:
            logger.warning(
                "Readers (%d ranks x %d workers) hold %d to %d samples: %d samples per epoch are left out so that "
                "every reader yields %d (shards of equal sample counts avoid this).",
                self.world_size,
                self.num_readers,
                min(totals),
                max(totals),
                self.left_out,
                min(totals),
            )

    @property
    def num_readers(self) -> int:
        """Readers per rank: the DataLoader workers, or the main process."""
        return max(1, self.num_workers)

    def _quota(self, reader: int) -> int:
        return self.quotas[self.rank * self.num_readers + reader]

    def __len__(self) -> int:
        """Samples this rank yields per epoch."""
        return sum(self._quota(reader) for reader in range(self.num_readers))

    @property
    def batches_per_epoch(self) -> int:
        """Batches per epoch on this rank: every reader makes its own batches, the last one possibly short."""
        return sum(math.ceil(self._quota(reader) / self.batch_size) for reader in range(self.num_readers))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_from(self, epoch: int, batches: int) -> None:
        """Start epoch ``epoch`` after its first ``batches`` batches (of this rank), which were trained already."""
        self.resume_epoch, self.resume_batches = epoch, batches

    def layout(self) -> dict[str, Any]:
        """What the reproducibility of the streams depends on; stored with each checkpoint."""
        return {
            "shards": [[s.url.rsplit("/", 1)[-1], s.num_samples] for s in self.manifest.shards],
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "shuffle_buffer": self.shuffle_buffer,
            "seed": self.seed,
        }

    def _reader_of(self, worker: int) -> int:
        """The reader a DataLoader worker plays. The DataLoader takes the workers' batches in turn, starting with
        worker 0, and every reader has the same number of batches, so batch ``k`` of an epoch is reader
        ``k % readers``'s. A resumed epoch rotates the roles so that worker 0 plays the reader whose batch is next:
        the order of batches is then the uninterrupted one, and so is the arithmetic of a second resume."""
        if self.resume_epoch != self.epoch:
            return worker
        return (worker + self.resume_batches) % self.num_readers

    def _delivered(self, reader: int) -> int:
        """Samples of ``reader`` in the resumed epoch's finished batches."""
        if self.resume_epoch != self.epoch:
            return 0
        done, extra = divmod(self.resume_batches, self.num_readers)
        return min(self._quota(reader), (done + (reader < extra)) * self.batch_size)

    def _rng(self, reader: int, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{reader}/{purpose}")

    def _samples(self, reader: int) -> Iterator[dict[str, Any]]:
        """The raw samples of this rank's ``reader`` in the epoch, in order, with their shard names."""
        shard_ids = list(self.readers[self.rank * self.num_readers + reader])
        if self.shuffle_buffer > 1:
            self._rng(reader, "shards").shuffle(shard_ids)
        for index in shard_ids:
            yield from _shard_samples(self.manifest.shards[index], self.options)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_readers:
            raise RuntimeError(f"built for {self.num_readers} DataLoader workers, run with {info.num_workers}")
        reader = self._reader_of(worker)
        stream: Iterator[dict[str, Any]] = self._samples(reader)
        if self.shuffle_buffer > 1:
            shuffle = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=self._rng(reader, "buffer"))
            stream = shuffle(stream)
        skip, quota = self._delivered(reader), self._quota(reader)
        for position, sample in enumerate(stream):
            if position >= quota:
                break
            if position < skip:
                continue  # trained before the checkpoint: not decoded again
            yield self._decode(sample)

    def _decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        key, shard = sample["__key__"], sample["__shard__"]
        members, problems = sample["members"], list(sample["problems"])
        media = sorted(extension for extension in members if extension != "json")
        name = f"{shard}/{key}.{media[0]}" if len(media) == 1 else f"{shard}/{key}"
        if not problems and len(media) != 1:
            found = ", ".join(f"{key}.{extension}" for extension in media)
            problems.append(f"{len(media)} media members ({found}), one expected" if media else "no media member")
        label, problem = _label(members.get("json"), key, self.manifest.class_names)
        if problem is not None and self.manifest.class_names is not None:
            problems.append(problem)  # an unlabeled corpus (pretraining) uses no label: 0 when it has none
        if problems:  # dropped and reported by the collator, as an undecodable file
            return {"key": name, "error": f"{name}: {'; '.join(problems)}"}
        if self.transform is None:
            return {"key": name, "media": members[media[0]], "label": label}
        row = self.transform({"path": [ShardMember(members[media[0]], name)], "label": [label]})
        return {"key": name, **{k: v[0] for k, v in row.items()}}


def shard_read_options(args: Any) -> ShardReadOptions:
    """``ShardReadOptions`` from a command line's ``shard_timeout``, ``shard_retries``, ``shard_max_member_size``."""
    try:
        max_member_bytes = parse_size(args.shard_max_member_size)
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"--shard_max_member_size: {error}") from None
    if args.shard_timeout <= 0 or args.shard_retries < 0:
        raise ValueError("--shard_timeout must be positive and --shard_retries at least 0")
    return ShardReadOptions(args.shard_timeout, args.shard_retries, max_member_bytes)


def shard_dataset(
    locations: str,
    transform: Any,
    args: TrainingArguments,
    shuffle_buffer: int = 1000,
    train: bool = True,
    options: ShardReadOptions | None = None,
) -> ShardedVideoDataset:
    """The ``ShardedVideoDataset`` of the manifests at ``locations`` for the ``Trainer`` run by ``args``: its batch
    size and workers, ``data_seed`` (else ``seed``); evaluation reads in order, rank 0's batches dispatched."""
    return ShardedVideoDataset(
        load_manifests(locations, options),
        transform,
        batch_size=args.per_device_train_batch_size if train else args.per_device_eval_batch_size,
        num_workers=args.dataloader_num_workers,
        shuffle_buffer=shuffle_buffer if train else 0,
        seed=args.data_seed if args.data_seed is not None else args.seed,
        split_by_rank=train,
        options=options,
    )


# ---------------------------------------------------------------------------------------------------------------------
# avbert-prepare shards
