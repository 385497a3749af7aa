"""Measure the start-up of `import avbert` and of every command line's `--help`, and record it in BENCHMARKS.md.

Examples:
    .venv/bin/python benchmarks/bench_startup.py --repeats 3              # the BENCHMARKS.md table
    .venv/bin/python benchmarks/bench_startup.py --repeats 1 --no-write   # smoke run

Each command runs in a fresh interpreter, the commands interleaved round by round, so the ratios to the baseline
(`import torch, transformers`) hold on a shared machine. The table is the `startup/cpu` block of the bench_model
section of BENCHMARKS.md (between `<!-- bench_model:block startup/cpu start -->` and its end marker).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from _report import (
    REPO_ROOT,
    command_line,
    describe_cpu,
    library_versions,
    log,
    python_environment,
    replace_model_block,
    utc_timestamp,
)

STARTUP_COMMANDS = {
    **{
        f"`{code}`": ["-c", code]
        for code in (
            "import torch, transformers",  # the baseline of the ratios
            "import torch, transformers; from transformers import PreTrainedModel",
            # The floor of the Trainer command lines' --help: HfArgumentParser needs TrainingArguments (imports torch).
            "import torch, transformers; from transformers import TrainingArguments",
            "import avbert",
            # A first use: the Auto registrations run when the Auto modules are imported.
            "import avbert; from transformers import AutoConfig",
            "import avbert; from transformers import AutoModel",
        )
    },
    **{
        f"`{script} --help`": ["-m", module, "--help"]
        for script, module in (
            ("avbert-train", "avbert.training.train"),
            ("avbert-evaluate", "avbert.training.evaluate"),
            ("avbert-pretrain", "avbert.training.pretrain"),
            ("avbert-prepare", "avbert.data.prepare"),
            ("avbert-demo", "avbert.training.demo"),
            ("avbert-convert", "avbert.convert_original_checkpoint"),
            ("avbert-params", "avbert.parameter_counts"),
        )
    },
}
BLOCK_KEY = "startup/cpu"


def measure_startup(repeats: int) -> dict[str, list[float]]:
    """Wall time of each start-up command in a fresh interpreter, the commands interleaved `repeats` times."""
    environment = python_environment()
    times: dict[str, list[float]] = {name: [] for name in STARTUP_COMMANDS}
    for repeat in range(repeats):
        for name, arguments in STARTUP_COMMANDS.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, *arguments], env=environment, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
            log(f"start-up round {repeat + 1}: {name} {times[name][-1]:.2f} s")
    return times


def format_startup_report(times: dict[str, list[float]], repeats: int) -> str:
    baseline = statistics.median(next(iter(times.values())))
    rows = ["| command | median (s) | min (s) | vs `import torch, transformers` |", "|---|---|---|---|"]
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(f"| {name} | {median:.2f} | {min(values):.2f} | {median / baseline:.2f}x |")
    lines = [
        "### Start-up on CPU",
        "",
        f"- Command: `{command_line()}`",
        f"- Date: {utc_timestamp()}; {library_versions(torch, transformers)}",
        f"- Machine: {describe_cpu()}, {os.cpu_count()} cores (shared with other jobs: compare the ratios, not "
        "the seconds)",
        f"- Method: each command in a fresh `{Path(sys.executable).name}` process (`-c` or `-m ... --help`), the "
        f"commands interleaved, {repeats} rounds; wall time including interpreter start-up.",
        "",
        "\n".join(rows),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print the results without updating BENCHMARKS.md")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "BENCHMARKS.md", help="file to update (default: repo BENCHMARKS.md)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = format_startup_report(measure_startup(args.repeats), args.repeats)
    print(report)
    if not args.no_write:
        replace_model_block(args.output, BLOCK_KEY, report)
        log(f"Updated the {BLOCK_KEY} table of {args.output}")


if __name__ == "__main__":
    main()
