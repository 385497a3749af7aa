"""Process-group teardown for runs under `torchrun` / `accelerate launch`."""

from __future__ import annotations

import gc

import torch.distributed as dist


def release_process_group() -> None:
    """Destroy the default process group, if a launcher made one, once this process is done with collectives.

    Left to interpreter shutdown, Gloo's worker threads can abort a process (SIGABRT, "terminate called without an
    active exception") after a run that succeeded, and the launcher then reports the whole job as failed. Drop the
    `Trainer` (its DistributedDataParallel wrapper holds Gloo work) before calling this: the collection here frees it
    while the group still exists.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
