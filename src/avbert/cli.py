"""What every avbert command line shares: the error for what the user has to fix (reported in one line) and the
parsing of byte sizes.

Kept free of heavy imports so that every parser stays quick to build.
"""

from __future__ import annotations

import argparse


class UsageError(ValueError):
    """A problem with the command line or the data that the user has to fix; reported in one line."""


def parse_size(text: str) -> int:
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
        raise argparse.ArgumentTypeError(f"a size must be positive, not {text!r}")
    return int(value)
