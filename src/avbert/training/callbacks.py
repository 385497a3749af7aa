"""Trainer callbacks for AVBERT runs."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)


class TrainingCurveCallback(TrainerCallback):
    """
    Write `training_curves.png` (train loss per logging step; eval loss and accuracies per evaluation) into the output
    folder at the end of training, so a run can be judged without starting TensorBoard. Only the main process plots.
    """

    def __init__(self, filename: str = "training_curves.png") -> None:
        self.filename = filename

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        try:
            path = plot_log_history(state.log_history, Path(args.output_dir) / self.filename)
        except ImportError:
            logger.warning("matplotlib is not installed; no training-curve plot written.")
            return
        if path is not None:
            logger.info("Training curves written to %s", path)


def plot_log_history(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    """Plot a `TrainerState.log_history`; returns the written path, or None when there is nothing to plot."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [e for e in log_history if "eval_loss" in e and "step" in e]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    accuracy_keys = sorted({k for e in evals for k in e if k.startswith("eval_") and "accuracy" in k})
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax_loss.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for key in accuracy_keys:
        points = [(e["step"], e[key]) for e in evals if key in e]
        ax_acc.plot(*zip(*points, strict=True), "o-", label=key.removeprefix("eval_"))
    ax_acc.set_xlabel("optimizer step")
    ax_acc.set_ylabel("accuracy")
    if accuracy_keys:
        ax_acc.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class ResumedScheduleCallback(TrainerCallback):
    """
    Warn when a run resumes a checkpoint with a larger `max_steps` than the run that wrote it.

    The schedules (the recipes' and the Trainer's) are rebuilt for the new total while the optimizer comes back with
    the old run's last learning rate, so the first resumed steps train at the old schedule's end value (0 for a
    finished run) and the rest follow neither schedule. Said loudly rather than silently trained.
    """

    def __init__(self, checkpoint: str | Path | None) -> None:
        self.checkpoint = None if checkpoint is None else Path(checkpoint)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.checkpoint is None:
            return
        saved = TrainerState.load_from_json(str(self.checkpoint / "trainer_state.json"))
        if saved.max_steps and state.max_steps > saved.max_steps:
            logger.warning(
                "Resuming %s (a run of %d steps) with %d steps: the learning-rate schedule is not extended. The first "
                "resumed steps use the old schedule's end value (lr 0 when it had finished) and the rest a schedule "
                "recomputed for %d steps. To train further, start a new run from the saved model (--model).",
                self.checkpoint,
                saved.max_steps,
                state.max_steps,
                state.max_steps,
            )


class SaveProcessorCallback(TrainerCallback):
    """
    Save the processor into every `checkpoint-N/`, so a checkpoint is a complete model folder (loadable with
    `AutoProcessor`) and `pipeline()` works on it, also for runs that do not pass the processor as the Trainer's
    `processing_class` (the CLIs build their Trainer around this callback; `processing_class=processor` works as well,
    see `AVBertProcessor.tokenizer`).

    The processor is written when a save is decided (`on_step_end` / `on_epoch_end` with `control.should_save`), before
    the Trainer writes the checkpoint, whose last file is `trainer_state.json`: a checkpoint with a readable trainer
    state therefore has its processor (`cli.is_complete_checkpoint`), even when the run was killed right after the
    state. Saves decided later (`save_strategy="best"`, after the evaluation) get it in `on_save`, after the state.
    """

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self._saved_for_step: int | None = None

    def _save(self, args: TrainingArguments, state: TrainerState) -> None:
        from .cli import CheckpointSaveError

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        try:
            self.processor.save_pretrained(folder)
        except OSError as error:
            raise CheckpointSaveError.from_failed_write(folder, error) from error
        self._saved_for_step = state.global_step

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if control.should_save and state.is_world_process_zero:
            self._save(args, state)

    on_epoch_end = on_step_end

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero and self._saved_for_step != state.global_step:
            self._save(args, state)


class CheckpointOnSignalCallback(TrainerCallback):
    """
    Turn SIGTERM (what SLURM and Kubernetes send before SIGKILL) into a checkpoint at the next optimizer step and the
    end of training, instead of the default immediate death with nothing saved.

    `handling_signals()` installs the handler for the duration of `train()` and puts the previous one back (the AVBERT
    trainers do both). With several processes the flag is all-reduced at each step, so every process saves the same
    step and none waits in a collective for one that stopped. The evaluation due at that step is skipped (it could
    outlast the grace period before SIGKILL); `received` then holds the signal number for the caller to report.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self.signals = signals
        self.received: int | None = None
        self.stopped = False
        self._pid = os.getpid()

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # signal.signal works in the main thread only
            logger.warning("train() is not running in the main thread: SIGTERM will not save a checkpoint.")
            yield
            return
        self.received, self.stopped, self._pid = None, False, os.getpid()
        previous = {number: signal.signal(number, self._handle) for number in self.signals}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _handle(self, number: int, frame: Any) -> None:
        # Processes forked during train() inherit the handler (PyTorch's DataLoader workers replace it with their
        # own, which dies: docs/training.md); only the training process says what it does.
        if self.received is None and os.getpid() == self._pid:
            logger.warning(
                "Received %s: saving a checkpoint after the current optimizer step, then stopping.",
                signal.Signals(number).name,
            )
        self.received = number

    def _any_process_received(self, args: TrainingArguments) -> bool:
        received = self.received is not None
        if args.world_size > 1:
            import torch
            import torch.distributed as dist

            flag = torch.tensor(float(received), device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            received = bool(flag.item())
            if received and self.received is None:
                self.received = self.signals[0]  # another process got it
        return received

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not self.stopped and self._any_process_received(args):
            self.stopped = True
            control.should_save = True
            control.should_evaluate = False
            control.should_training_stop = True

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.stopped:  # the step's checkpoint is written already; no epoch-end evaluation or second save
            control.should_save = False
            control.should_evaluate = False
