"""Measuring and reporting helpers shared by the benchmark scripts.

Reporting: the marked sections of BENCHMARKS.md and the description of a run (command line, date, library versions,
CPU model and its vector/matrix extensions, cores, load). A script owns the text between `<!-- NAME:start -->` and
`<!-- NAME:end -->`; `replace_section` rewrites only that text, so scripts (and people) can edit the rest of the file
independently. The bench_model section holds one block per table instead, written by `replace_model_block` (both
bench_model.py and bench_startup.py own blocks there).

Measuring: progress logs stamped with the time since the start, resident memory read from /proc, and fresh Python
processes that import the worktree's avbert (and this module) for figures a process of its own must give.
"""

import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

STARTED = time.perf_counter()  # log stamps and run times count from here, after the scripts import torch
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("AVBERT_SHARED_DIR", REPO_ROOT.parent / "shared"))
VIDEOS_DIR = SHARED_DIR / "data" / "videos"
CPU_FLAGS_REPORTED = ("avx512f", "avx512_bf16", "amx_bf16")

# ----------------------------------------------------------------------------------------------------------------
# BENCHMARKS.md
# ----------------------------------------------------------------------------------------------------------------


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


def publish(report: str, section: str, path: Path, write: bool) -> None:
    """Print `report` and, if `write`, make it the `section` of `path`."""
    print(report)
    if write:
        replace_section(path, section, report)
        log(f"Updated the {section} section of {path}")


MODEL_SECTION_START, MODEL_SECTION_END = section_markers("bench_model")
MODEL_BLOCK_PATTERN = re.compile(
    r"<!-- bench_model:block (?P<key>\S+) start -->\n.*?<!-- bench_model:block (?P=key) end -->", re.DOTALL
)


def replace_model_block(path: Path, key: str, report: str) -> None:
    """Replace the `key` table in the bench_model section of `path`, keeping every other table and section."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(MODEL_SECTION_START)
    end = text.find(MODEL_SECTION_END, max(start, 0))
    if (start == -1) != (end == -1):
        raise ValueError(f"{path} has an unbalanced {MODEL_SECTION_START} / {MODEL_SECTION_END} pair; fix it by hand.")
    blocks = {}
    if start != -1:
        blocks = {m["key"]: m[0] for m in MODEL_BLOCK_PATTERN.finditer(text[start:end])}
    blocks[key] = f"<!-- bench_model:block {key} start -->\n{report}\n<!-- bench_model:block {key} end -->"
    section = "\n\n".join(
        [
            MODEL_SECTION_START,
            "## Model speed and memory (`benchmarks/bench_model.py`)",
            "One table per task and device type; each run replaces only its own table."
            + (
                ""
                if any(k.endswith("/cuda") for k in blocks)
                else " No GPU figures: no GPU was available where these were measured (the sessions' device tool lent"
                " none; `--device cuda` adds them: bf16 autocast, `torch.compile`, the TF32 policy, videos/s and MFU)."
            ),
            *(blocks[k] for k in sorted(blocks)),
            MODEL_SECTION_END,
        ]
    )
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = text[:start] + section + text[end + len(MODEL_SECTION_END) :]
    path.write_text(text)


# ----------------------------------------------------------------------------------------------------------------
# Description of the run
# ----------------------------------------------------------------------------------------------------------------


def command_line() -> str:
    """The command that started this process, with the interpreter relative to the working directory if inside it."""
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    return shlex.join([str(python), *sys.argv])


def utc_timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def library_versions(*modules: ModuleType) -> str:
    """ "Python 3.11.9, torch 2.9.0, ..." for the given imported modules (each named by its import name)."""
    return ", ".join([f"Python {platform.python_version()}", *(f"{m.__name__} {m.__version__}" for m in modules)])


def _read_cpuinfo() -> tuple[str, set[str]]:
    """CPU model name and feature flags from /proc/cpuinfo (the platform's processor string where it is missing)."""
    name, flags = "", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return name or platform.processor() or "unknown CPU", flags


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string where it is missing)."""
    return _read_cpuinfo()[0]


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it is missing)."""
    return _read_cpuinfo()[1]


def describe_cpu_flags() -> str:
    """Whether the CPU has AVX-512, native bf16 arithmetic and AMX: what CPU figures (bf16 above all) depend on."""
    flags = cpu_flags()
    return ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in CPU_FLAGS_REPORTED)


def describe_cpu() -> str:
    """The CPU model and its AVX-512 / avx512_bf16 / AMX flags, so that every figure names the CPU it came from."""
    return f"{cpu_model()} ({describe_cpu_flags()})"


def cpu_has_native_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the platform has one), not the machine's total."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def format_load(load: tuple[float, ...] | None = None, separator: str = "/") -> str:
    """The 1, 5 and 15 min load averages (now, or `load` as read earlier by `os.getloadavg()`)."""
    return separator.join(f"{value:.1f}" for value in (os.getloadavg() if load is None else load))


# ----------------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress on stderr, stamped with the seconds since the script started."""
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def proc_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status ("VmRSS": resident now, "VmHWM": peak resident) in MiB; None without it."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return None


def python_environment() -> dict[str, str]:
    """This environment with the worktree's src/ (avbert) and benchmarks/ (this module) first on the import path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(Path(__file__).parent)])}


def run_python(code: str, *arguments: str) -> object:
    """Run `code` in a fresh interpreter (`python -c code arguments`) and return the JSON of its last output line.

    A figure that a process must give on its own (its peak resident memory, its start-up) is measured this way.
    """
    child = subprocess.run(
        [sys.executable, "-c", code, *arguments], capture_output=True, text=True, env=python_environment(), check=True
    )
    return json.loads(child.stdout.strip().splitlines()[-1])
