"""The `Trainer` subclasses: `AVBertTrainer` (a fine-tuning `Recipe`'s optimizer and schedule), `PreTrainer` (the
pretraining objectives logged) with its `PretrainingCollator`, and what every AVBERT trainer shares: the skipped-files
bookkeeping, the normalization of uint8 frames on the model's device and, on the CPU, the reuse of freed memory.
Apart from `recipes.py` and `pretrain.py` so that the command lines' `--help` (which needs the recipes and the
argument dataclasses) does not import `transformers.Trainer` and `datasets` (seconds)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.transform import AVBertDataCollator
from ..weights_checksum import verify_weight_checksums
from .callbacks import CheckpointOnSignalCallback
from .cli import CheckpointSaveError, TrainingInterrupted
from .heap import enable_freed_memory_reuse
from .recipes import Recipe, build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

# The pretraining losses `PreTrainer` logs apart (keys of `AVBertForPreTraining`'s output).
OBJECTIVES = ("visual_mep_loss", "audio_mep_loss", "multimodal_mep_loss", "pair_loss")


class SkippedFilesMixin:
    """Collects the ``skipped_files`` an ``AVBertDataCollator(report_skipped=True)`` puts in each batch (the collator
    runs in DataLoader workers, other processes) and takes them out before the forward pass."""

    def _take_skipped(self, inputs: dict[str, Any]) -> None:
        if not hasattr(self, "_skipped_files"):
            self._skipped_files: list[str] = []
        self._skipped_files += inputs.pop("skipped_files", None) or []

    def training_step(self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        self._take_skipped(inputs)
        return super().training_step(model, inputs, *args, **kwargs)

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self._take_skipped(inputs)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def skipped_files_metrics(self, prefix: str = "") -> dict[str, Any]:
        """``num_skipped_files`` and ``skipped_files`` ("PATH: reason", sorted, each once) seen by every process since
        the last call; every process must call it (the lists are gathered)."""
        from accelerate.utils import gather_object

        local, self._skipped_files = list(getattr(self, "_skipped_files", [])), []
        everyone = gather_object(local) if self.args.world_size > 1 else local
        skipped = sorted(set(everyone))
        if skipped:
            logger.warning("%d files could not be decoded and were skipped: %s", len(skipped), skipped)
        return {f"{prefix}num_skipped_files": len(skipped), f"{prefix}skipped_files": skipped}

    def report_metrics(self, split: str, metrics: dict[str, Any]) -> None:
        """`log_metrics` (the scalars: it formats each as a number) and `save_metrics` (everything, file lists too)."""
        self.log_metrics(split, {key: value for key, value in metrics.items() if not isinstance(value, list)})
        self.save_metrics(split, metrics)


class SafeCheckpointMixin:
    """
    What the AVBERT trainers add to checkpointing: a failed save (a full disk above all) is a `CheckpointSaveError`
    naming the folder and file instead of torch's "basic_ios::clear: iostream error", and SIGTERM during `train()`
    saves a checkpoint at the next optimizer step, then ends `train()` with `TrainingInterrupted`
    (`CheckpointOnSignalCallback`; the command lines exit 143). Resuming checks the checkpoint's weights against their
    saved SHA-256 (`weights_checksum`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.signal_callback = CheckpointOnSignalCallback()
        # First of the run's callbacks: the save it requests is seen by those after it (SaveProcessorCallback).
        kwargs["callbacks"] = [self.signal_callback, *(kwargs.get("callbacks") or [])]
        super().__init__(*args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        with self.signal_callback.handling_signals():
            output = super().train(*args, **kwargs)
        if self.signal_callback.received is not None:
            name = signal.Signals(self.signal_callback.received).name
            checkpoint = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            raise TrainingInterrupted(
                f"stopped by {name} at step {self.state.global_step} of {self.state.max_steps}; checkpoint saved to "
                f"{checkpoint}. Continue with --resume_from_checkpoint true.",
                self.signal_callback.received,
            )
        return output

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as error:  # torch.save on a full disk raises a RuntimeError without errno
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            raise CheckpointSaveError.from_failed_write(folder, error) from error

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        verify_weight_checksums(resume_from_checkpoint)  # the Trainer reads the weights without from_pretrained
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        try:
            super().save_model(output_dir, _internal_call)
        except (OSError, RuntimeError) as error:
            if _internal_call:  # inside _save_checkpoint, which reports the checkpoint folder
                raise
            raise CheckpointSaveError.from_failed_write(output_dir or self.args.output_dir, error) from error


class DeviceNormalizationMixin:
    """Finishes uint8 ``pixel_values`` (``MediaTransform(defer_normalization=True)``) on the device the model runs
    on: ``video_processor.normalize_clips`` (``x / 255``, the batch's ``clip_jitter``, mean and std) after the batch
    is moved there, so that the DataLoader workers send uint8 and the float work runs on the accelerator. Batches are
    copied from pinned memory without blocking (``dataloader_pin_memory``, the default, pins them on a GPU)."""

    def __init__(self, *args: Any, video_processor: Any = None, **kwargs: Any) -> None:
        self.video_processor = video_processor
        super().__init__(*args, **kwargs)
        if video_processor is not None and self.args.dataloader_pin_memory:
            self.accelerator.dataloader_config.non_blocking = True  # read when the DataLoaders are prepared

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        clip_jitter = inputs.pop("clip_jitter", None)  # float64 factors: rounded on the CPU, see normalize_clips
        pixels = inputs.get("pixel_values")
        deferred = isinstance(pixels, torch.Tensor) and pixels.dtype == torch.uint8
        if deferred:
            if self.video_processor is None:
                raise ValueError(
                    "the batch holds uint8 pixel_values (MediaTransform(defer_normalization=True)): give the trainer "
                    "video_processor=processor.video_processor to normalize them on the model's device"
                )
            inputs["pixel_values"] = pixels.to(self.args.device, non_blocking=pixels.is_pinned())
        inputs = super()._prepare_inputs(inputs)
        if deferred:
            inputs["pixel_values"] = self.video_processor.normalize_clips(inputs["pixel_values"], clip_jitter)
        return inputs


class FreedMemoryReuseMixin:
    """On the CPU, glibc's malloc keeps the memory a step frees for the next one (`heap.enable_freed_memory_reuse`):
    no page faults after the first steps, 1.2-1.3x faster full-size steps on 2 cores, for a heap that stays at the
    largest step's peak. ``reuse_freed_memory=False`` leaves the allocator as it is."""

    def __init__(self, *args: Any, reuse_freed_memory: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if reuse_freed_memory and self.args.device.type == "cpu":
            enable_freed_memory_reuse()


class AVBertTrainer(FreedMemoryReuseMixin, SafeCheckpointMixin, DeviceNormalizationMixin, SkippedFilesMixin, Trainer):
    """
    `Trainer` with the original optimizer and schedule of a `Recipe`.

    The `TrainingArguments` learning rate, weight decay, optimizer, scheduler and warmup settings are NOT used by the
    optimizer: the recipe decides (change the recipe with `dataclasses.replace` to experiment). The AVBERT classifiers
    take `num_items_in_batch` and average their loss per clip themselves, so the `Trainer`'s gradient-accumulation
    and multi-process loss scaling give the same loss as one large batch.
    """

    def __init__(self, *args: Any, recipe: Recipe, **kwargs: Any) -> None:
        self.recipe = recipe
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = build_optimizer(self.model if model is None else model, self.recipe)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        if self.lr_scheduler is None:
            self.lr_scheduler = build_scheduler(
                self.optimizer if optimizer is None else optimizer, self.recipe, num_training_steps
            )
            # The Trainer re-creates schedulers it made itself when train() is called again (e.g. on resume).
            self._created_lr_scheduler = True
        return self.lr_scheduler


class PretrainingCollator(AVBertDataCollator):
    """`AVBertDataCollator` (unreadable files reported and dropped) without the placeholder labels."""

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        batch = super().__call__(features)
        batch.pop("labels", None)
        return batch


class PreTrainer(FreedMemoryReuseMixin, SafeCheckpointMixin, DeviceNormalizationMixin, SkippedFilesMixin, Trainer):
    """`Trainer` that also logs the mean of each pretraining objective since the last log (this process's batches)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._objective_sums: dict[str, torch.Tensor] = {}
        self._objective_steps = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:
            for key in OBJECTIVES:
                value = outputs[key].detach().float()
                self._objective_sums[key] = self._objective_sums.get(key, 0.0) + value
            self._objective_steps += 1
        loss = outputs["loss"]
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._objective_steps:
            for key, total in self._objective_sums.items():
                logs[key] = round(total.item() / self._objective_steps, 4)
            self._objective_sums, self._objective_steps = {}, 0
        super().log(logs, start_time)
