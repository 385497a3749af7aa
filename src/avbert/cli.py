"""What every avbert command line shares: the error for what the user has to fix, reported in one line.

Kept free of imports so that every parser stays quick to build.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A problem with the command line or the data that the user has to fix; reported in one line."""
