"""Training on shards: the ``Trainer`` side of ``avbert.data.shards``.

``ShardTrainerMixin`` (and ``shard_trainer``, which adds it to any ``Trainer`` class) hands the ``ShardedVideoDataset``
its epoch, checks that a resumed run keeps the checkpoint's data layout, and makes every reader skip the samples the
checkpoint's step count says it has delivered, so that a resume neither repeats nor loses a sample; it also logs the
true epoch after such a resume.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..data.shards import READER_STATE_NAME, ShardedVideoDataset

logger = logging.getLogger(__name__)


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


class _ResumedEpochCallback(TrainerCallback):
    """Corrects the epoch the ``Trainer`` logs in a resumed epoch: it counts the batches it has seen in the epoch
    (``epoch + (step + 1) / batches_per_epoch``), and with the readers skipping the finished batches themselves it
    never saw those, so after a resume at a quarter of an epoch it would log 0.125 where 0.375 is right."""

    def __init__(self, dataset: ShardedVideoDataset) -> None:
        self.dataset = dataset

    def on_step_end(self, args, state, control, **kwargs):
        resumed = self.dataset.resume_epoch
        if resumed is not None and state.epoch is not None and math.floor(state.epoch) == resumed:
            state.epoch += self.dataset.resume_batches / self.dataset.batches_per_epoch


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
            self.add_callback(_ResumedEpochCallback(self.train_dataset))

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
