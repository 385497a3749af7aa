"""Measure AVBERT speed and memory (eval forward, train step, peak memory) and record them in BENCHMARKS.md.

Examples:
    .venv/bin/python benchmarks/bench_model.py                     # full-size Kinetics-Sounds model, fp32 and bf16
    .venv/bin/python benchmarks/bench_model.py --tiny --no-write   # smoke run in seconds
    .venv/bin/python benchmarks/bench_model.py --device cuda       # GPU figures, in their own table

The script owns the part of BENCHMARKS.md between `<!-- bench_model:start -->` and `<!-- bench_model:end -->`. Inside
it there is one table per (task, device type) and a run replaces only its own table, so CPU and GPU figures coexist.
"""

import argparse
import contextlib
import ctypes
import datetime
import gc
import os
import platform
import re
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from avbert import AVBertConfig, AVBertForAudioClassification, AVBertForVideoClassification

STARTED = time.perf_counter()  # after the (slow) torch and transformers imports
REPO_ROOT = Path(__file__).resolve().parents[1]

SECTION_START = "<!-- bench_model:start -->"
SECTION_END = "<!-- bench_model:end -->"
BLOCK_PATTERN = re.compile(
    r"<!-- bench_model:block (?P<key>\S+) start -->\n.*?<!-- bench_model:block (?P=key) end -->", re.DOTALL
)
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
TASKS = ("kinetics-sounds", "ucf101", "esc50")
DEFAULT_ITERS = {"cpu": (1, 3), "cuda": (5, 20)}  # (warmup, iters)
MIB = 2**20
RU_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux

# A small architecture for smoke runs: every module of the full model, a few seconds on a laptop CPU.
TINY_CONFIG = {
    "num_frames": 4,
    "visual_base_width": 8,
    "visual_depths": (1, 1, 1, 1),
    "num_mel_bins": 32,
    "audio_num_frames": 32,
    "audio_base_width": 4,
    "audio_depths": (1, 1, 1, 1),
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "orthogonal_size": 16,
}
FULL_IMAGE_SIZE, TINY_IMAGE_SIZE = 112, 32


# ----------------------------------------------------------------------------------------------------------------
# Model and inputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    """A model in train-ready fp32 and the inputs of one batch, on the benchmark device."""

    model: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    batch_size: int
    num_clips: int

    @property
    def clips_per_batch(self) -> int:
        return self.batch_size * self.num_clips


def default_num_clips(task: str) -> int:
    return 1 if task == "ucf101" else 10


def build_config(task: str, tiny: bool) -> AVBertConfig:
    overrides = dict(TINY_CONFIG) if tiny else {}
    if task == "kinetics-sounds":
        return AVBertConfig(num_labels=32, **overrides)
    if task == "ucf101":
        return AVBertConfig(use_audio=False, use_transformer=False, num_labels=101, **overrides)
    return AVBertConfig(use_visual=False, use_transformer=False, num_labels=50, **overrides)


def build_workload(task: str, batch_size: int, num_clips: int, tiny: bool, device: torch.device) -> Workload:
    config = build_config(task, tiny)
    model_class = AVBertForAudioClassification if task == "esc50" else AVBertForVideoClassification
    model = model_class(config).to(device)
    image_size = TINY_IMAGE_SIZE if tiny else FULL_IMAGE_SIZE
    shapes = {}
    if config.use_visual:
        shapes["pixel_values"] = (batch_size, num_clips, config.num_channels, config.num_frames, image_size, image_size)
    if config.use_audio:
        shapes["input_features"] = (batch_size, num_clips, 1, config.num_mel_bins, config.audio_num_frames)
    generator = torch.Generator().manual_seed(0)
    inputs = {name: torch.randn(shape, generator=generator).to(device) for name, shape in shapes.items()}
    labels = torch.randint(config.num_labels, (batch_size,), generator=generator).to(device)
    return Workload(model, inputs, labels, batch_size, num_clips)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------------------------


def _read_vm_hwm_kib() -> int | None:
    """The process's peak resident set size (VmHWM) in KiB, or None where /proc is unavailable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_vm_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where it is not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS, so one phase's RSS does not hide the next one's."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of a phase: on CUDA the allocator's peak, on CPU the peak RSS increase over the phase start."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_method = self._choose_cpu_method()

    @staticmethod
    def _choose_cpu_method() -> str:
        if _read_vm_hwm_kib() is not None and _reset_vm_hwm():
            return "vmhwm"
        return "ru_maxrss"

    def describe(self) -> str:
        if self.device.type == "cuda":
            return (
                "`torch.cuda.max_memory_allocated()` over the phase, reset before it (absolute: includes weights, "
                "inputs and, for training, gradients and Adam state; excludes the caching allocator's reserve)"
            )
        if self.cpu_method == "vmhwm":
            return (
                "process peak RSS increase over the phase start (`VmHWM` from /proc/self/status, reset before each "
                "phase by writing 5 to /proc/self/clear_refs, after `gc.collect()` and `malloc_trim(0)`). Weights "
                "and inputs predate the phase and are not counted; the train phase's Adam state is"
            )
        return (
            "increase of `resource.getrusage(RUSAGE_SELF).ru_maxrss` over the phase (cannot be reset: only growth "
            "beyond the process's earlier peak shows, so later phases may read low)"
        )

    @contextlib.contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        """Yield a dict whose "mib" entry holds the phase's peak once the block exits."""
        result: dict[str, float] = {}
        _release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield result
            torch.cuda.synchronize(self.device)
            result["mib"] = torch.cuda.max_memory_allocated(self.device) / MIB
        elif self.cpu_method == "vmhwm":
            _reset_vm_hwm()
            start_kib = _read_vm_hwm_kib() or 0
            yield result
            result["mib"] = ((_read_vm_hwm_kib() or 0) - start_kib) / 1024
        else:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            yield result
            result["mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) * RU_MAXRSS_UNIT / MIB


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DtypeResult:
    dtype: str
    eval_median_ms: float
    eval_min_ms: float
    eval_clips_per_s: float
    train_median_ms: float
    train_clips_per_s: float
    eval_peak_mib: float
    train_peak_mib: float


def autocast_context(dtype_name: str, device: torch.device) -> contextlib.AbstractContextManager:
    dtype = DTYPES[dtype_name]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def time_calls(step: Callable[[], None], warmup: int, iters: int, device: torch.device) -> list[float]:
    """Run `step` warmup + iters times; return the wall time of the last `iters` calls in milliseconds."""

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    synchronize()
    times_ms = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        synchronize()
        times_ms.append((time.perf_counter() - start) * 1000)
    return times_ms


def time_eval(workload: Workload, dtype_name: str, warmup: int, iters: int, device: torch.device) -> list[float]:
    model = workload.model.eval()

    def step() -> None:
        with torch.inference_mode(), autocast_context(dtype_name, device):
            model(**workload.inputs)

    return time_calls(step, warmup, iters, device)


def time_train(workload: Workload, dtype_name: str, warmup: int, iters: int, device: torch.device) -> list[float]:
    model = workload.model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        with autocast_context(dtype_name, device):
            loss = model(**workload.inputs, labels=workload.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_calls(step, warmup, iters, device)  # the optimizer and its Adam state die with this frame


def benchmark_dtype(
    workload: Workload, dtype_name: str, warmup: int, iters: int, device: torch.device, memory: PeakMemory
) -> DtypeResult:
    log(f"[{dtype_name}] eval: {warmup} warmup + {iters} timed forwards")
    with memory.measure() as eval_memory:
        eval_ms = time_eval(workload, dtype_name, warmup, iters, device)
    log(f"[{dtype_name}] eval median {statistics.median(eval_ms):.1f} ms; train: {warmup} warmup + {iters} steps")
    with memory.measure() as train_memory:
        train_ms = time_train(workload, dtype_name, warmup, iters, device)
    log(f"[{dtype_name}] train step median {statistics.median(train_ms):.1f} ms")
    eval_median, train_median = statistics.median(eval_ms), statistics.median(train_ms)
    return DtypeResult(
        dtype=dtype_name,
        eval_median_ms=eval_median,
        eval_min_ms=min(eval_ms),
        eval_clips_per_s=workload.clips_per_batch / (eval_median / 1000),
        train_median_ms=train_median,
        train_clips_per_s=workload.clips_per_batch / (train_median / 1000),
        eval_peak_mib=eval_memory["mib"],
        train_peak_mib=train_memory["mib"],
    )


# ----------------------------------------------------------------------------------------------------------------
# Environment description
# ----------------------------------------------------------------------------------------------------------------


def read_cpuinfo() -> tuple[str, set[str]]:
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


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return (
            f"{torch.cuda.get_device_name(device)} ({properties.total_memory / 2**30:.0f} GiB, compute capability "
            f"{properties.major}.{properties.minor}; CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}, cudnn.benchmark={torch.backends.cudnn.benchmark})"
        )
    name, _ = read_cpuinfo()
    return f"{name}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def describe_cpu_flags() -> str:
    _, flags = read_cpuinfo()
    line = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("avx512f", "avx512_bf16", "amx_bf16"))
    return f"{line} (torch CPU capability: {torch.backends.cpu.get_cpu_capability()})"


def cpu_has_native_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & read_cpuinfo()[1])


def resolve_dtypes(requested: list[str] | None, device: torch.device, tiny: bool) -> tuple[list[str], str | None]:
    """
    The dtypes to measure and a note for the report. By default fp32 and bf16, except on a CPU without native bf16
    for the full-size model: there PyTorch runs bf16 convolutions through its reference kernels, which take minutes
    per forward of the full model, so bf16 is left out unless asked for.
    """
    if device.type == "cuda" or cpu_has_native_bf16():
        return requested or ["fp32", "bf16"], None
    why = (
        "this CPU has no native bf16 arithmetic (no AVX512_BF16/AMX), so PyTorch runs bf16 convolutions through its "
        "reference `slow_conv3d`/`slow_conv2d` kernels instead of oneDNN"
    )
    if requested is None and not tiny:
        return ["fp32"], (
            f"bf16 not measured: {why}; bf16 is far SLOWER than fp32 here (about an order of magnitude for this "
            "model) and a run would take tens of minutes. Pass `--dtypes fp32,bf16` to measure it anyway."
        )
    dtypes = requested or ["fp32", "bf16"]
    return dtypes, (f"{why}: bf16 is expected to be much SLOWER than fp32 here." if "bf16" in dtypes else None)


def _on_off(precision: str) -> str:
    return "enabled" if precision == "tf32" else "disabled"


def describe_tf32() -> str:
    """Whether fp32 matmuls and cuDNN convolutions may use TF32 (the torch defaults are left unchanged)."""
    matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    conv = getattr(torch.backends.cudnn.conv, "fp32_precision", None) if hasattr(torch.backends.cudnn, "conv") else None
    if matmul is None or conv is None:  # torch < 2.9
        matmul = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
        conv = "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return (
        f"CUDA matmul {_on_off(matmul)} (`fp32_precision={matmul!r}`), cuDNN convolutions {_on_off(conv)} "
        f"(`fp32_precision={conv!r}`); torch defaults, not changed by this script"
    )


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def format_table(results: list[DtypeResult]) -> str:
    header = (
        "| dtype | eval median (ms) | eval min (ms) | eval clips/s | train step median (ms) | train clips/s "
        "| eval peak mem (MiB) | train peak mem (MiB) |"
    )
    rows = [header, "|" + "---|" * 8]
    for r in results:
        rows.append(
            f"| {r.dtype} | {r.eval_median_ms:,.1f} | {r.eval_min_ms:,.1f} | {r.eval_clips_per_s:,.2f} "
            f"| {r.train_median_ms:,.1f} | {r.train_clips_per_s:,.2f} | {r.eval_peak_mib:,.0f} "
            f"| {r.train_peak_mib:,.0f} |"
        )
    return "\n".join(rows)


def command_line() -> str:
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    return shlex.join([str(python), *sys.argv])


@dataclass
class RunInfo:
    args: argparse.Namespace
    device: torch.device
    workload: Workload
    memory: PeakMemory
    warmup: int
    iters: int
    note: str | None
    wall_s: float


def block_key(args: argparse.Namespace, device: torch.device) -> str:
    """The table a run owns: one per task, device type and workload (tiny configs and non-default shapes apart)."""
    shape = ""
    if args.batch_size != 1:
        shape += f"-batch{args.batch_size}"
    if args.num_clips is not None and args.num_clips != default_num_clips(args.task):
        shape += f"-clips{args.num_clips}"
    return f"{args.task}{'-tiny' if args.tiny else ''}{shape}/{device.type}"


def format_report(info: RunInfo, results: list[DtypeResult]) -> str:
    """The markdown heading, run description and results table of one run."""
    args, device, workload = info.args, info.device, info.workload
    model = workload.model
    shapes = ", ".join(f"{name} {tuple(tensor.shape)}" for name, tensor in workload.inputs.items())
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### {args.task}{' (tiny config)' if args.tiny else ''} on {device.type.upper()}",
        "",
        f"- Command: `{command_line()}` (run time {info.wall_s:.0f} s, imports excluded)",
        f"- Date: {date}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- Device: {describe_device(device)}",
    ]
    if device.type == "cpu":
        lines.append(f"- CPU flags: {describe_cpu_flags()}")
    lines += [
        f"- TF32: {describe_tf32()}" + ("; not applicable on CPU" if device.type == "cpu" else ""),
        f"- Model: `{type(model).__name__}`, {count_parameters(model):,} parameters, attention "
        f"`{model.config._attn_implementation}`; batch size {workload.batch_size}, "
        f"clips per video {workload.num_clips}, inputs {shapes}",
        f"- Method: {info.warmup} warmup + {info.iters} timed iterations per phase. Eval: `model.eval()` under "
        "`torch.inference_mode()`. Train step: `model.train()`, forward with labels, backward, Adam step, "
        "`zero_grad`. bf16: `torch.autocast(device_type, dtype=torch.bfloat16)` around the forward, fp32 weights. "
        "clips/s = batch x clips / median time.",
        f"- Peak memory: {info.memory.describe()}.",
    ]
    if info.note:
        lines.append(f"- Note: {info.note}")
    lines += ["", format_table(results)]
    return "\n".join(lines)


def update_benchmarks_file(path: Path, key: str, report: str) -> None:
    """Replace the `key` table in the bench_model section of `path`, keeping every other table and section."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(SECTION_START)
    end = text.find(SECTION_END, max(start, 0))
    if (start == -1) != (end == -1):
        raise ValueError(f"{path} has an unbalanced {SECTION_START} / {SECTION_END} pair; fix it by hand.")
    blocks = {}
    if start != -1:
        blocks = {m["key"]: m[0] for m in BLOCK_PATTERN.finditer(text[start:end])}
    blocks[key] = f"<!-- bench_model:block {key} start -->\n{report}\n<!-- bench_model:block {key} end -->"
    section = "\n\n".join(
        [
            SECTION_START,
            "## Model speed and memory (`benchmarks/bench_model.py`)",
            "One table per task and device type; each run replaces only its own table.",
            *(blocks[k] for k in sorted(blocks)),
            SECTION_END,
        ]
    )
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = text[:start] + section + text[end + len(SECTION_END) :]
    path.write_text(text)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress on stderr, stamped with the seconds since the script started."""
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def parse_dtypes(value: str) -> list[str]:
    dtypes = list(dict.fromkeys(item.strip() for item in value.split(",") if item.strip()))
    unknown = [item for item in dtypes if item not in DTYPES]
    if not dtypes or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(DTYPES)}, got {value!r}")
    return dtypes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS, default="kinetics-sounds", help="model and inputs to measure")
    parser.add_argument("--batch-size", type=int, default=1, help="videos per batch (default 1)")
    parser.add_argument(
        "--num-clips", type=int, default=None, help="clips per video (default 10; 1 for ucf101, its single-clip recipe)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--dtypes",
        type=parse_dtypes,
        default=None,
        help="comma-separated subset of fp32, bf16 (default both; fp32 only for the full model on a CPU without "
        "native bf16, where bf16 takes tens of minutes)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations per phase (CPU 1, GPU 5)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per phase (CPU 3, GPU 20)")
    parser.add_argument("--tiny", action="store_true", help="tiny config for a smoke run in seconds")
    parser.add_argument("--no-write", action="store_true", help="print the results without updating BENCHMARKS.md")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "BENCHMARKS.md", help="file to update (default: repo BENCHMARKS.md)"
    )
    args = parser.parse_args(argv)
    if args.num_clips is None:
        args.num_clips = default_num_clips(args.task)
    for name in ("batch_size", "num_clips", "iters", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be non-negative")
    return args


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available.")
    return torch.device(choice)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtypes, note = resolve_dtypes(args.dtypes, device, args.tiny)
    if "bf16" in dtypes and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SystemExit("This GPU does not support bf16; pass --dtypes fp32.")
    default_warmup, default_iters = DEFAULT_ITERS[device.type]
    warmup = default_warmup if args.warmup is None else args.warmup
    iters = default_iters if args.iters is None else args.iters

    torch.manual_seed(0)
    log(f"Building {args.task}{' (tiny)' if args.tiny else ''} on {device} ...")
    workload = build_workload(args.task, args.batch_size, args.num_clips, args.tiny, device)
    memory = PeakMemory(device)
    results = [benchmark_dtype(workload, name, warmup, iters, device, memory) for name in dtypes]

    info = RunInfo(args, device, workload, memory, warmup, iters, note, time.perf_counter() - STARTED)
    report = format_report(info, results)
    print(report)
    if not args.no_write:
        update_benchmarks_file(args.output, block_key(args, device), report)
        log(f"Updated {args.output}")


if __name__ == "__main__":
    main()
