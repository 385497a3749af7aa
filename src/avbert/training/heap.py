"""Reuse of freed memory on CPU: glibc's malloc told to keep what a step frees for the next step.

By default glibc serves every block above its mmap threshold (which grows with the blocks freed, to at most 32 MiB)
with a fresh ``mmap`` and unmaps it when it is freed. Most activations of a full-size model are larger than that
(the Kinetics-Sounds visual stem's output alone is 128 MB in training), so on every step the kernel maps, faults in
and zeroes several GB again: about 1.5 million page faults per train step of that model, a sixth of its CPU time on
2 cores, and half a million per eval forward (docs/performance.md, "Freed memory reused"). With both thresholds at
their largest, blocks come from the heap and stay there when freed, so from the third step on a step faults in
nothing: that train step is 1.2-1.3x faster, the eval forward 1.26x. The price is resident memory: the heap stays at
the largest step's peak plus its fragmentation (the process's peak RSS +25% for that train step, +7% for the eval
forward) and is not returned to the system while the process lives.

The training and evaluation commands own their process, so `AVBertTrainer`, `PreTrainer` (hence ``avbert-train``
and ``avbert-pretrain``) and ``avbert-evaluate`` turn it on when they run on the CPU; ``reuse_freed_memory=False`` /
``--no_reuse_freed_memory`` leaves the allocator as it is. Library calls that run in a user's process (``pipeline``,
``from_pretrained``) never change it.
"""

from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger(__name__)

# mallopt parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# mallopt takes an int: its largest value keeps every block a step allocates in the heap and the heap's free top
# from being handed back.
LARGEST_THRESHOLD = 2**31 - 1
# The help of the commands' flag.
REUSE_FREED_MEMORY_HELP = (
    "On the CPU, keep the memory a step frees for the next one (glibc malloc; docs/performance.md, Freed memory "
    "reused); --no_reuse_freed_memory leaves malloc as it is."
)


def enable_freed_memory_reuse() -> bool:
    """Set glibc's mmap and trim thresholds to their largest, for the rest of the process (and the DataLoader workers
    it forks from now on). Returns whether it did: False, with a log line, where the C library is not glibc or
    refuses the values; nothing is changed then."""
    if not running_on_glibc():
        logger.info("freed memory reuse: the C library is not glibc, its malloc is left as it is")
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if not mallopt(M_MMAP_THRESHOLD, LARGEST_THRESHOLD):
        logger.info(
            "freed memory reuse: glibc refused an mmap threshold of %d bytes, malloc left as it is", LARGEST_THRESHOLD
        )
        return False
    mallopt(M_TRIM_THRESHOLD, LARGEST_THRESHOLD)
    logger.info("glibc malloc keeps freed memory for the next step (docs/performance.md, Freed memory reused)")
    return True


def running_on_glibc() -> bool:
    """Whether the C library this process runs on is glibc (asked of the library itself, not of the executable)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # the name is unknown outside glibc-like systems
        return False
