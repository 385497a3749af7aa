"""Sharded, streamed video corpora: WebDataset tar shards written by ``avbert-prepare shards`` and read by
``avbert-train`` / ``avbert-pretrain`` on any number of processes and DataLoader workers.

A shard is a plain POSIX tar (the WebDataset layout, readable by ``tar``, ``webdataset`` and ``datasets``'
``webdataset`` builder): per sample ``KEY.<ext>`` holds the media file's bytes exactly as they were (no re-encoding)
and ``KEY.json`` its label and source. ``manifest.json`` next to the shards lists every shard with its sample count,
size and SHA-256, the class names, and the files left out with the reason: unreadable ones, and with ``--recipe`` or
``--unlabeled`` (pretraining reads video and sound) the ones without the streams the training reads, such as WAV files
and silent videos for pretraining (probed and decoded by ``avbert-prepare check``'s `decode_problem`).

Reading (``ShardedVideoDataset``), built on ``webdataset``'s tar streaming (local paths, ``http(s)://`` through
``curl``, ``pipe:`` commands, which is how object stores are read):

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
  finished optimizer steps tells exactly which samples every reader has delivered. ``ShardTrainerMixin`` reads the
  checkpoint's step count and makes each reader skip its delivered samples without decoding them (their bytes are
  still read, to rebuild the shuffle buffer), instead of the ``Trainer`` decoding and discarding every finished batch.
  No finished sample is trained again, none is lost, provided the data layout (shards, ranks, workers, batch size,
  seed) is the checkpoint's; with another layout the resumed epoch starts over (epoch granularity) with a warning.
- Decoding happens in the DataLoader workers through the same ``MediaTransform`` as the folder datasets; a sample
  that does not decode is reported ("SHARD/KEY: reason") and dropped by the collator, as a bad file is.
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import io
import json
import logging
import math
import os
import random
import sys
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_NAME",
    "ShardManifest",
    "ShardSpec",
    "ShardTrainerMixin",
    "ShardedVideoDataset",
    "load_manifests",
    "prepare_shards",
    "shard_dataset",
    "shard_trainer",
    "write_shards",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "avbert-webdataset-1"
READER_STATE_NAME = "shard_reader.json"
_URL_SCHEMES = ("http://", "https://", "pipe:", "file:", "gs://", "s3://")


# ---------------------------------------------------------------------------------------------------------------------
# Manifest


@dataclass
class ShardSpec:
    """One shard: where it is (relative to its manifest when written), how many samples, bytes and its SHA-256."""

    url: str
    num_samples: int
    num_bytes: int = 0
    sha256: str = ""


@dataclass
class ShardManifest:
    """What ``avbert-prepare shards`` wrote: the shards, the class names (None: unlabeled) and the files left out."""

    shards: list[ShardSpec]
    class_names: list[str] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    format: str = FORMAT

    @property
    def num_samples(self) -> int:
        return sum(shard.num_samples for shard in self.shards)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "num_samples": self.num_samples}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, location: str) -> ShardManifest:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r} is not {FORMAT!r}")
            shards = [ShardSpec(**shard) for shard in data["shards"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{location}: not an avbert shard manifest ({error})") from error
        return cls(shards=shards, class_names=data.get("class_names"), skipped=data.get("skipped", []))


def _is_url(location: str) -> bool:
    return location.startswith(_URL_SCHEMES)


def _manifest_location(location: str) -> str:
    """A manifest file, or a folder / URL prefix holding ``manifest.json``."""
    if location.endswith(".json"):
        return location
    return location.rstrip("/") + "/" + MANIFEST_NAME


def _read_manifest(location: str) -> ShardManifest:
    """Read one manifest and make its shard locations absolute (relative to the manifest's own folder or URL)."""
    location = _manifest_location(location)
    try:
        with wds.gopen(location, "rb") as stream:
            text = stream.read().decode()
    except Exception as error:  # gopen raises OSError locally, IOError/ValueError from curl for URLs
        raise ValueError(f"shard manifest not readable: {location} ({error})") from error
    manifest = ShardManifest.from_json(text, location)
    base = location.rsplit("/", 1)[0] if "/" in location else "."
    for shard in manifest.shards:
        if not (_is_url(shard.url) or shard.url.startswith("/")):
            shard.url = f"{base}/{shard.url}"
    return manifest


def load_manifests(locations: str | Sequence[str]) -> ShardManifest:
    """One manifest for one or several corpora.

    ``locations``: manifest files, shard folders or URL prefixes; a string may list several, comma-separated, with
    brace patterns (``data/part-{0..3}``) and, for local paths, globs (``data/*/manifest.json``). The class names of
    labeled corpora must agree.
    """
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
    manifests = [_read_manifest(location) for location in expanded]
    names = {tuple(m.class_names) if m.class_names is not None else None for m in manifests}
    if len(names) > 1:
        raise ValueError(f"the shard manifests {expanded} have different class names")
    return ShardManifest(
        shards=[shard for m in manifests for shard in m.shards],
        class_names=manifests[0].class_names,
        skipped=[item for m in manifests for item in m.skipped],
    )


# ---------------------------------------------------------------------------------------------------------------------
# Writing


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tar_file_bytes(members: int) -> int:
    """The tar file's size: the members, two zero blocks, padded to tarfile's 10240-byte records."""
    return -(-(members + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def write_shards(
    files: Sequence[Path],
    labels: Sequence[int] | None,
    output_dir: Path,
    class_names: Sequence[str] | None = None,
    shard_size: int = 1 << 30,
    shard_samples: int | None = None,
    root: Path | None = None,
    skipped: Sequence[tuple[Path, str]] = (),
) -> ShardManifest:
    """Write ``files`` (already probed as readable) into ``shard-NNNNNN.tar`` in ``output_dir`` + ``manifest.json``.

    A shard is closed before its file would exceed ``shard_size`` bytes (a larger file gets a shard of its own) or
    when it holds ``shard_samples`` samples. Sample keys are the running index; ``KEY.json`` keeps the label, the
    class name and the source path (relative to ``root``).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    if any(output_dir.glob("shard-*.tar")) or (output_dir / MANIFEST_NAME).exists():
        raise ValueError(f"{output_dir} already holds shards; choose an empty output folder")
    if labels is not None and len(labels) != len(files):
        raise ValueError(f"{len(files)} files but {len(labels)} labels")
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
        meta: dict[str, Any] = {"source": str(file.relative_to(root) if root else file.name)}
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
    ) -> None:
        super().__init__()
        if not manifest.shards:
            raise ValueError("the shard manifest lists no shards")
        self.manifest = manifest
        self.transform = transform
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
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
        shards = [self.manifest.shards[i] for i in shard_ids]
        for shard in shards:
            yielded = 0
            for sample in wds.tarfile_to_samples()(iter([{"url": shard.url}])):
                sample["__shard__"] = shard.url
                yielded += 1
                yield sample
            if yielded != shard.num_samples:
                raise RuntimeError(
                    f"{shard.url}: {yielded} samples read, the manifest says {shard.num_samples} (truncated or "
                    "replaced shard?)"
                )

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
        key, shard = sample["__key__"], sample["__shard__"].rsplit("/", 1)[-1]
        media_ext = next((k for k in sample if not k.startswith("__") and k != "json"), None)
        meta = json.loads(sample["json"]) if "json" in sample else {}
        label = int(meta.get("label", 0))
        if media_ext is None:  # dropped and reported by the collator, as an undecodable file
            return {"key": f"{shard}/{key}", "labels": label, "error": f"{shard}/{key}: no media member in the sample"}
        name = f"{shard}/{key}.{media_ext}"
        if self.transform is None:
            return {"key": name, "media": sample[media_ext], "label": label}
        row = self.transform({"path": [ShardMember(sample[media_ext], name)], "label": [label]})
        return {"key": name, **{k: v[0] for k, v in row.items()}}


class ShardLoader(DataLoader):
    """The DataLoader of a ``ShardedVideoDataset``: its length is the dataset's batches per epoch, and ``set_epoch``
    reaches the dataset (the ``Trainer`` calls it at the start of every epoch)."""

    def __len__(self) -> int:
        return self.dataset.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


class _ReaderStateCallback(TrainerCallback):
    """Writes the shard reader's layout into every checkpoint, to tell at resume whether it can continue exactly."""

    def __init__(self, dataset: ShardedVideoDataset) -> None:
        self.dataset = dataset

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / READER_STATE_NAME).write_text(json.dumps(self.dataset.layout()) + "\n")


class ShardTrainerMixin:
    """For a ``Trainer`` subclass whose ``train_dataset`` is a ``ShardedVideoDataset``.

    The training DataLoader is built here, not by ``accelerate`` (which would shard an iterable dataset a second time
    or dispatch rank 0's batches to every rank): the dataset already splits by rank and worker. On resume, the
    finished batches are skipped by the readers instead of being decoded and discarded (``ignore_data_skip``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.train_dataset, ShardedVideoDataset):
            self.add_callback(_ReaderStateCallback(self.train_dataset))

    def get_train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset
        if not isinstance(dataset, ShardedVideoDataset):
            return super().get_train_dataloader()
        args = self.args
        if (dataset.batch_size, dataset.num_workers) != (args.per_device_train_batch_size, args.dataloader_num_workers):
            raise ValueError(
                f"the shard dataset was built for batch size {dataset.batch_size} and {dataset.num_workers} workers, "
                f"the Trainer uses {args.per_device_train_batch_size} and {args.dataloader_num_workers}"
            )
        if args.dataloader_persistent_workers:
            raise ValueError("persistent DataLoader workers would not see the epoch change of a shard dataset")
        workers = args.dataloader_num_workers
        return ShardLoader(
            dataset,
            batch_size=args.per_device_train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=args.dataloader_pin_memory,
            prefetch_factor=args.dataloader_prefetch_factor if workers else None,
            multiprocessing_context=args.dataloader_multiprocessing_context if workers else None,
        )

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        dataset = self.train_dataset
        if isinstance(dataset, ShardedVideoDataset) and resume_from_checkpoint:
            checkpoint = (
                get_last_checkpoint(self.args.output_dir)
                if resume_from_checkpoint is True
                else str(resume_from_checkpoint)
            )
            if checkpoint is not None:
                self._resume_readers(dataset, Path(checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _resume_readers(self, dataset: ShardedVideoDataset, checkpoint: Path) -> None:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        layout_file = checkpoint / READER_STATE_NAME
        saved = json.loads(layout_file.read_text()) if layout_file.is_file() else None
        accumulation = self.args.gradient_accumulation_steps
        steps_per_epoch = math.ceil(dataset.batches_per_epoch / accumulation)
        epoch, steps = divmod(int(state["global_step"]), steps_per_epoch)
        # The readers skip the finished batches themselves (or, with another layout, none): never the Trainer, which
        # would decode and discard them.
        self.args.ignore_data_skip = True
        if saved != json.loads(json.dumps(dataset.layout())):
            logger.warning(
                "%s was written with another shard layout (%s, now %s): epoch %d starts over (epoch granularity)",
                checkpoint,
                saved,
                dataset.layout(),
                epoch,
            )
            return
        dataset.resume_from(epoch, steps * accumulation)
        logger.info("Resuming the shard readers in epoch %d after %d finished batches", epoch, steps * accumulation)


class ShardTrainer(ShardTrainerMixin, Trainer):
    """A plain ``Trainer`` that reads a ``ShardedVideoDataset``."""


@functools.cache
def shard_trainer(trainer_class: type[Trainer]) -> type[Trainer]:
    """``trainer_class`` with ``ShardTrainerMixin`` (shard training and resume; anything else unchanged)."""
    if issubclass(trainer_class, ShardTrainerMixin):
        return trainer_class
    return type(f"Shard{trainer_class.__name__}", (ShardTrainerMixin, trainer_class), {})


def shard_dataset(
    locations: str, transform: Any, args: TrainingArguments, shuffle_buffer: int = 1000, train: bool = True
) -> ShardedVideoDataset:
    """The ``ShardedVideoDataset`` of the manifests at ``locations`` for the ``Trainer`` run by ``args``: its batch
    size and workers, ``data_seed`` (else ``seed``); evaluation reads in order, rank 0's batches dispatched."""
    return ShardedVideoDataset(
        load_manifests(locations),
        transform,
        batch_size=args.per_device_train_batch_size if train else args.per_device_eval_batch_size,
        num_workers=args.dataloader_num_workers,
        shuffle_buffer=shuffle_buffer if train else 0,
        seed=args.data_seed if args.data_seed is not None else args.seed,
        split_by_rank=train,
    )


# ---------------------------------------------------------------------------------------------------------------------
# avbert-prepare shards


def _parse_size(text: str) -> int:
    """``"1GB"``, ``"500MB"``, ``"64KiB"`` or a plain byte count -> bytes."""
    units = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    number = text.strip().lower().removesuffix("b")
    digits = number.rstrip("kmgti")
    unit = number[len(digits) :]
    try:
        value = float(digits) * units[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GB, 500MB, 64KiB, 1000000)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"the shard size must be positive, not {text!r}")
    return int(value)


def _shards_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avbert-prepare shards",
        description="Write WebDataset tar shards of media files (bytes as they are) with their labels and a manifest.",
    )
    parser.add_argument("source", type=Path, help="a dataset folder (see --layout) or, with --unlabeled, any folder")
    parser.add_argument("output_dir", type=Path, help="an empty folder for shard-NNNNNN.tar and manifest.json")
    parser.add_argument("--shard-size", type=_parse_size, default=_parse_size("1GB"), help="bytes per shard (1GB)")
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
    return parser


def prepare_shards(argv: Sequence[str]) -> int:
    """``avbert-prepare shards SOURCE OUT``: probe every file, write the usable ones, list the others with the reason.

    Usable: readable media; with ``--recipe`` or ``--unlabeled`` (pretraining: video and sound), also holding the
    streams the training reads (`decode_problem`), so that no shard carries a sample every epoch then skips."""
    from .folders import _TABLE_SPLITS, _class_tree, find_media_files, load_media_dataset
    from .prepare import RECIPE_MODALITIES, _media_problem, decode_problem

    args = _shards_parser().parse_args(argv)
    source = args.source.expanduser().absolute()
    modality = RECIPE_MODALITIES[args.recipe] if args.recipe else "audio-visual" if args.unlabeled else None
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
        if not keep:
            needs = "readable media" if modality is None else f"usable for {modality} training"
            reasons = "; ".join(f"{path.name}: {problem}" for path, problem in skipped[:3])
            raise ValueError(f"none of the {len(files)} files under {source} is {needs} (e.g. {reasons})")
        manifest = write_shards(
            [files[i] for i in keep],
            [labels[i] for i in keep] if labels is not None else None,
            args.output_dir.expanduser().absolute(),
            class_names=names,
            shard_size=args.shard_size,
            shard_samples=args.shard_samples,
            root=root if all(root in f.parents for f in files) else None,
            skipped=skipped,
        )
    except ValueError as error:
        print(f"avbert-prepare shards: error: {error}", file=sys.stderr)
        return 1
    total = sum(shard.num_bytes for shard in manifest.shards)
    print(
        f"{manifest.num_samples} samples in {len(manifest.shards)} shards ({total / 1e6:.1f} MB) -> {args.output_dir}"
        f" (manifest: {args.output_dir / MANIFEST_NAME})"
    )
    if skipped:
        print(f"skipped {len(skipped)} files (listed in the manifest with the reason):", file=sys.stderr)
        for path, reason in skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
    return 0
