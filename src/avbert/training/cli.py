"""What the training command lines share: exit status, launcher detection and checkpoint resume.

Kept free of heavy imports (no transformers, no datasets at module level) so that parsers stay quick to build.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from ..cli import UsageError

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What every checkpoint holds once `Trainer._save_checkpoint` got to its end: `trainer_state.json` is its last file.
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


# Less free space than this after a failed write: the disk is taken to be full. `torch.save` says so only as
# "unexpected pos ..." or "basic_ios::clear: iostream error" (a RuntimeError without errno).
_NEARLY_FULL_BYTES = 64 * 2**20


class CheckpointSaveError(OSError):
    """A checkpoint or model folder could not be written (most often a full disk); the message names the folder, the
    file being written and what to do. Reported in one line."""

    @classmethod
    def from_failed_write(cls, folder: str | os.PathLike[str], error: BaseException) -> CheckpointSaveError:
        folder = Path(folder)
        files = [path for path in folder.iterdir() if path.is_file()] if folder.is_dir() else []
        written = sorted(files, key=lambda path: path.stat().st_mtime)  # the newest is the one that failed
        where = f"{folder} (writing {written[-1].name})" if written else str(folder)
        existing = next(path for path in (folder, *folder.parents) if path.exists())
        free = shutil.disk_usage(existing).free
        if (
            getattr(error, "errno", None) == errno.ENOSPC
            or "No space left on device" in str(error)
            or free < _NEARLY_FULL_BYTES
        ):
            return cls(
                errno.ENOSPC,
                f"could not write {where}: the disk is full (errno ENOSPC, {free / 2**20:.1f} MiB left; "
                f"{type(error).__name__}: {error}). Free space (or lower --save_total_limit, or give an --output_dir "
                "on a larger disk), then run again with --resume_from_checkpoint true: the incomplete checkpoint is "
                "removed and training continues from the newest complete one.",
            )
        return cls(
            getattr(error, "errno", None) or errno.EIO,
            f"could not write {where}: {type(error).__name__}: {error}. The incomplete checkpoint is not resumed "
            "from (--resume_from_checkpoint true takes the newest complete one).",
        )


class TrainingInterrupted(Exception):
    """Training stopped early on a signal (SIGTERM from a scheduler) after saving a checkpoint to resume from."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number


def exit_status(prog: str, run: Callable[[], object]) -> int:
    """Run a command's work; 0 when it finished, 1 with a one-line ``prog: error: ...`` for a user error.

    ``ValueError`` is what the loaders and configs raise for bad folders, files and values (the message names them),
    ``CheckpointSaveError`` a checkpoint that could not be written; the traceback goes to the debug log. A run stopped
    by a signal after saving its checkpoint (`TrainingInterrupted`) exits 128 + the signal number (143 for SIGTERM,
    what a shell reports for a process killed by it), so that schedulers do not take it for a finished run. Anything
    else propagates with its traceback (non-zero as well).
    """
    try:
        run()
    except (ValueError, CheckpointSaveError) as error:
        logger.debug("%s failed", prog, exc_info=True)
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:
        print(f"{prog}: {stop}", file=sys.stderr)
        return 128 + stop.signal_number
    return 0


def require_output_dir(parser: argparse.ArgumentParser) -> None:
    """Make ``--output_dir`` required (in the usage and the help too): transformers' ``TrainingArguments`` would write
    hours of checkpoints to ``./trainer_output`` in whatever folder the command happened to run in."""
    for action in parser._actions:
        if action.dest == "output_dir":
            action.required = True
            action.help = "Required: the folder for checkpoints, the model and metrics."


def has_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def launched_on_cpu_without_flag() -> bool:
    """True under a multi-process launcher (``WORLD_SIZE`` > 1) on a machine without an accelerator.

    The Trainer then needs ``use_cpu=True`` to join the launcher's process group (gloo): without it each process
    trains alone on its own copy of the data ("process group is initialized, but parallel_mode != DISTRIBUTED").
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not has_accelerator()


def refuse_single_process_accelerate_cpu() -> None:
    """``accelerate launch --cpu --num_processes N`` starts ONE process (accelerate runs several CPU processes only
    through ``mpirun``); it sets ``MASTER_ADDR`` for N > 1 but no ``WORLD_SIZE``. Refuse instead of training on 1/N
    of the planned processes."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes"}
    if use_cpu and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        raise UsageError(
            "`accelerate launch --cpu --num_processes N` starts a single process without mpirun; for N CPU "
            "processes use `accelerate launch --multi_gpu --num_processes N ...` or `torchrun --nproc_per_node N ...` "
            "(both are data parallel on CPU: avbert sets use_cpu when there is no accelerator)"
        )


def is_complete_checkpoint(folder: Path) -> bool:
    """A checkpoint a crash did not cut short: weights and a readable ``trainer_state.json`` (written last; the
    processor of ``SaveProcessorCallback`` and the weights' checksum file are written before it)."""
    state = folder / "trainer_state.json"
    if not state.is_file() or not any((folder / name).is_file() for name in _WEIGHTS):
        return False
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str | os.PathLike[str], remove_incomplete: bool = True) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``output_dir``; newer incomplete ones (a run killed while saving) are
    reported and, with ``remove_incomplete``, deleted so that the resumed run can write them again."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    checkpoints = sorted(
        (int(match[1]), path) for path in root.iterdir() if path.is_dir() and (match := _CHECKPOINT.match(path.name))
    )
    complete = [path for _, path in checkpoints if is_complete_checkpoint(path)]
    newest = complete[-1] if complete else None
    newest_step = int(_CHECKPOINT.match(newest.name)[1]) if newest is not None else -1
    for step, path in checkpoints:
        if step > newest_step and not is_complete_checkpoint(path):
            logger.warning("%s is incomplete (the run stopped while saving it); resuming from %s", path, newest)
            if remove_incomplete:
                shutil.rmtree(path, ignore_errors=True)
    return newest


def resolve_resume(value: str | bool | None, output_dir: str | os.PathLike[str], is_main: bool = True) -> str | None:
    """``--resume_from_checkpoint``: ``true`` / ``last`` / ``latest`` -> the newest complete checkpoint of the run (an
    error when there is none); a path is taken as it is. Only the main process deletes incomplete checkpoints."""
    if value is None or value is False or (isinstance(value, str) and value.lower() in {"", "false", "no", "none"}):
        return None
    if value is True or (isinstance(value, str) and value.lower() in {"true", "last", "latest"}):
        checkpoint = last_complete_checkpoint(output_dir, remove_incomplete=is_main)
        if checkpoint is None:
            raise UsageError(f"--resume_from_checkpoint {value}: no complete checkpoint-* in {output_dir}")
        return str(checkpoint)
    if not Path(value).is_dir():
        raise UsageError(f"--resume_from_checkpoint {value}: no such folder")
    if not is_complete_checkpoint(Path(value)):
        raise UsageError(f"--resume_from_checkpoint {value}: an incomplete checkpoint (no weights or trainer_state)")
    return str(value)


SHARD_READ_HELP = {
    "timeout": "Seconds an http(s) shard or manifest may send nothing (connect, headers, any read) before it fails.",
    "retries": "Further attempts to open an http(s) shard that is unreachable, times out or answers 5xx.",
    "max_member_size": "Largest shard member read (e.g. 1GiB, 500MB); a sample with a larger one is skipped, unread.",
}
