"""Trainer callbacks for AVBERT runs."""

from __future__ import annotations

import logging
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
    `AutoProcessor`) and `pipeline()` works on it. `Trainer(processing_class=...)` would do it, but in transformers 5.24
    `Trainer.train()` reads `processing_class.tokenizer`, which a processor without a tokenizer does not have.
    """

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.processor.save_pretrained(Path(args.output_dir) / f"checkpoint-{state.global_step}")
