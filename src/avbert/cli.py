"""What every avbert command line shares: one-line errors for what the user has to fix, and the exit status.

Kept free of heavy imports so that every parser stays quick to build.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """A problem with the command line or the data that the user has to fix; reported in one line."""


def exit_status(prog: str, run: Callable[[], object]) -> int:
    """Run a command's work; 0 when it finished, 1 with a one-line ``prog: error: ...`` for a user error.

    ``ValueError`` is what the loaders and configs raise for bad folders, files and values (the message names them);
    the traceback goes to the debug log. Anything else propagates with its traceback (non-zero as well).
    """
    try:
        run()
    except ValueError as error:
        logger.debug("%s failed", prog, exc_info=True)
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    return 0
