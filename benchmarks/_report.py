"""Helpers shared by the benchmark scripts: marked sections of BENCHMARKS.md and a description of the run.

A script owns the text between `<!-- NAME:start -->` and `<!-- NAME:end -->`; `replace_section` rewrites only that
text, so scripts (and people) can edit the rest of the file independently.
"""

import contextlib
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

__all__ = ["available_cores", "command_line", "cpu_model", "replace_section", "section_markers", "utc_timestamp"]


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(path: Path, name: str, body: str, title: str = "# Benchmarks") -> None:
    """Put `body` between the `name` markers of `path`, leaving every byte outside them unchanged.

    Where the section is absent it is appended (a missing file is created with `title` first). A file with a marker
    missing, repeated, or with the end before the start is refused rather than guessed at.
    """
    start_marker, end_marker = section_markers(name)
    text = path.read_text() if path.exists() else f"{title}\n"
    starts, ends = text.count(start_marker), text.count(end_marker)
    section = f"{start_marker}\n\n{body.strip()}\n\n{end_marker}"
    if starts == 0 and ends == 0:
        path.write_text(text.rstrip("\n") + "\n\n" + section + "\n")
        return
    start, end = text.find(start_marker), text.find(end_marker)
    if starts != 1 or ends != 1 or end < start:
        raise ValueError(f"{path}: expected one {start_marker} followed by one {end_marker}; fix the file by hand.")
    path.write_text(text[:start] + section + text[end + len(end_marker) :])


def command_line() -> str:
    """The command that started this process, with the interpreter relative to the working directory if inside it."""
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    return shlex.join([str(python), *sys.argv])


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string where it is missing)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return platform.processor() or "unknown CPU"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the platform has one), not the machine's total."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def utc_timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
