"""Measure AVBERT speed and memory (eval forward, train step, peak memory) and record them in BENCHMARKS.md.

Every run measures the plain port and each fast path (docs/performance.md) side by side: the same model and inputs,
the variants interleaved round by round, so the ratios hold on a shared machine.

Examples:
    .venv/bin/python benchmarks/bench_model.py --dtypes fp32 --iters 2   # full-size Kinetics-Sounds model (~10 min)
    .venv/bin/python benchmarks/bench_model.py --tiny --no-write         # smoke run
    .venv/bin/python benchmarks/bench_model.py --device cuda             # GPU: + bf16 and torch.compile variants, MFU

On CPU the variants that reuse freed memory (glibc's thresholds at their largest, what the trainers and
avbert-evaluate set) run in a second process that takes its turn in the same rounds, since that setting is
process-wide; the others run in this one with glibc's defaults.

On CPU the peak memory of each variant is measured again in a fresh process of its own (`--memory isolated`, the
default): in the timed rounds glibc still holds heap the earlier variants freed, which a process running one variant
would not have.

The script owns the part of BENCHMARKS.md between `<!-- bench_model:start -->` and `<!-- bench_model:end -->`. Inside
it there is one table per (task, device type) and a run replaces only its own table, so CPU and GPU figures coexist
(the start-up table there is bench_startup.py's).
"""

import argparse
import contextlib
import ctypes
import gc
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from _report import (
    REPO_ROOT,
    STARTED,
    command_line,
    cpu_has_native_bf16,
    cpu_model,
    describe_cpu_flags,
    format_load,
    library_versions,
    log,
    proc_status_mib,
    replace_model_block,
    utc_timestamp,
)
from torch.utils.flop_counter import FlopCounterMode

from avbert import AVBertConfig, AVBertForAudioClassification, AVBertForVideoClassification
from avbert.training.heap import enable_freed_memory_reuse

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
# The recipes' crops: eval on the 128 short side (center crop), train on a random 112 crop.
IMAGE_SIZES = {"full": {"eval": 128, "train": 112}, "tiny": {"eval": 32, "train": 32}}


# ----------------------------------------------------------------------------------------------------------------
# Model and inputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    """A model in train-ready fp32 and the inputs of one batch per phase, on the benchmark device."""

    model: torch.nn.Module
    inputs: dict[str, dict[str, torch.Tensor]]  # phase ("eval", "train") -> model inputs
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
    # Residual blocks with live last norms (not the zero-scale init), so BatchNorm folding works on real values.
    config = build_config(task, tiny)
    config.zero_init_final_batch_norm = False
    model_class = AVBertForAudioClassification if task == "esc50" else AVBertForVideoClassification
    model = model_class(config).to(device)
    generator = torch.Generator().manual_seed(0)
    inputs = {}
    for phase, image_size in IMAGE_SIZES["tiny" if tiny else "full"].items():
        shapes = {}
        if config.use_visual:
            shapes["pixel_values"] = (batch_size, num_clips, config.num_channels, config.num_frames) + (image_size,) * 2
        if config.use_audio:
            shapes["input_features"] = (batch_size, num_clips, 1, config.num_mel_bins, config.audio_num_frames)
        inputs[phase] = {name: torch.randn(shape, generator=generator).to(device) for name, shape in shapes.items()}
    labels = torch.randint(config.num_labels, (batch_size,), generator=generator).to(device)
    calibrate_batch_norms(model, {name: tensor[:, :2] for name, tensor in inputs["train"].items()})
    return Workload(model, inputs, labels, batch_size, num_clips)


def calibrate_batch_norms(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Running statistics from one training-mode pass (as after training), instead of the init's zero mean, unit var."""
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = 1.0
    with torch.no_grad():
        model.train()(**inputs)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------------------------


def _reset_vm_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where it is not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _release_free_memory(trim: bool) -> None:
    """Collect garbage and, with `trim`, hand freed heap memory back to the OS, so one phase's RSS does not hide the
    next one's."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if trim:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of a phase: on CUDA the allocator's peak, on CPU the peak RSS increase over the phase start."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_method = self._choose_cpu_method()

    @staticmethod
    def _choose_cpu_method() -> str:
        if proc_status_mib("VmHWM") is not None and _reset_vm_hwm():
            return "vmhwm"
        return "ru_maxrss"

    def describe(self, isolated: bool) -> str:
        if self.device.type == "cuda":
            return (
                "`torch.cuda.max_memory_allocated()` over each timed step, reset before it (absolute: includes "
                "weights, inputs and, for training, gradients and Adam state; excludes the caching allocator's "
                "reserve); the largest over the timed rounds"
            )
        if self.cpu_method == "vmhwm":
            method = (
                "process peak RSS increase over the step (`VmHWM` from /proc/self/status, reset before the step by "
                "writing 5 to /proc/self/clear_refs, after `gc.collect()`). Weights, inputs and "
                "Adam's state (allocated in the warmup) predate the step and are not counted: activations, gradients "
                "and temporaries are"
            )
        else:
            method = (
                "increase of `resource.getrusage(RUSAGE_SELF).ru_maxrss` over the step (cannot be reset: only growth "
                "beyond the process's earlier peak shows, so later steps may read low)"
            )
        if isolated:
            return (
                f"{method}. *peak mem*: each variant in a fresh process of its own (`--memory isolated`: the "
                "workload built again with the same seed, the warmup steps (at least one), `malloc_trim(0)`, then the "
                "measured step; three steps for a reused-memory variant, whose heap grows back over them), so the "
                "heap holds only what that variant needs, as in a process that runs it; *in-process*: the same "
                "measure in the timed rounds without the trim (a trimmed heap faults its pages in again, which would "
                "slow the timed step), the largest over them, after the other variants ran in the same process "
                "(the heap they freed is reused or not, so it varies from run to run); n/a for the reused-memory "
                "variants, whose heap keeps the last step's memory by design"
            )
        return (
            f"{method}; in the timed rounds without `malloc_trim` (a trimmed heap faults its pages in again), the "
            "largest over them (`--memory in-process`)"
        )

    @contextlib.contextmanager
    def measure(self, trim: bool = True) -> Iterator[dict[str, float]]:
        """Yield a dict whose "mib" entry holds the phase's peak once the block exits. `trim=False` leaves the heap as
        it is (in the timed rounds: a trimmed heap faults its pages in again, which no training process does)."""
        result: dict[str, float] = {}
        _release_free_memory(trim)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield result
            torch.cuda.synchronize(self.device)
            result["mib"] = torch.cuda.max_memory_allocated(self.device) / MIB
        elif self.cpu_method == "vmhwm":
            _reset_vm_hwm()
            start_mib = proc_status_mib("VmHWM") or 0
            yield result
            result["mib"] = (proc_status_mib("VmHWM") or 0) - start_mib
        else:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            yield result
            result["mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) * RU_MAXRSS_UNIT / MIB


# ----------------------------------------------------------------------------------------------------------------
# Variants and timing
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """
    One way of running the same model on the same inputs. Every switch is applied at run time to the one shared
    model, so all variants of a run use identical weights.
    """

    phase: str  # "eval" or "train"
    name: str
    dtype: str = "fp32"
    fast_path: bool = False  # eval: cnn_fast_inference; train: cnn_channels_last_training (both default True)
    fused_optimizer: bool = False  # torch.optim.Adam(fused=True): one fused kernel for the whole update
    checkpointing: bool = False  # model.activation_checkpointing_enable(): CNN blocks and transformer layer
    compile: bool = False  # torch.compile(model)
    # CPU: glibc keeps freed memory for the next step (avbert.training.heap, what the trainers and avbert-evaluate
    # turn on). A process-wide setting, so these variants run in a process of their own (StepChild).
    reuse_freed_memory: bool = False


def build_variants(dtypes: list[str], compile_model: bool, cpu: bool) -> list[Variant]:
    """Per dtype: the plain port and each fast path, eval then train. *fast* is what a user gets by default: in eval
    the model's own default; in training the recipes' (on the CPU with the trainers' reuse of freed memory)."""
    variants = []
    for dtype in dtypes:
        variants += [Variant("eval", "plain", dtype), Variant("eval", "fast", dtype, fast_path=True)]
        if cpu:
            variants.append(
                Variant("eval", "fast + freed memory reused", dtype, fast_path=True, reuse_freed_memory=True)
            )
        if compile_model:
            variants.append(Variant("eval", "fast + compile", dtype, fast_path=True, compile=True))
    fast = {"fast_path": True, "fused_optimizer": True, "reuse_freed_memory": cpu}
    for dtype in dtypes:
        variants += [Variant("train", "plain", dtype), Variant("train", "channels-last", dtype, fast_path=True)]
        if cpu:
            variants.append(Variant("train", "channels-last + fused Adam", dtype, fast_path=True, fused_optimizer=True))
        variants += [
            Variant("train", "fast", dtype, **fast),
            Variant("train", "fast + checkpointing", dtype, checkpointing=True, **fast),
        ]
        if compile_model:
            variants.append(Variant("train", "fast + compile", dtype, compile=True, **fast))
    return variants


@dataclass
class Measurement:
    variant: Variant
    times_ms: list[float]
    peak_mib: list[float]
    output: object = None  # the last eval output, for the parity check
    isolated_peak_mib: float | None = None  # CPU: the step's peak in a process of its own (--memory isolated)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def peak(self) -> float:
        return max(self.peak_mib) if self.isolated_peak_mib is None else self.isolated_peak_mib


def autocast_context(dtype_name: str, device: torch.device) -> contextlib.AbstractContextManager:
    dtype = DTYPES[dtype_name]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Runner:
    """Makes the step of each variant: the shared model set up as the variant asks, then one eval or train step."""

    def __init__(self, workload: Workload, device: torch.device):
        self.workload = workload
        self.device = device
        self.compiled: torch.nn.Module | None = None
        self.optimizers: dict[bool, torch.optim.Optimizer] = {}

    def _prepare(self, variant: Variant) -> Callable[..., object]:
        model = self.workload.model
        model.train(variant.phase == "train")
        model.config.cnn_fast_inference = model.config.cnn_channels_last_training = variant.fast_path
        if variant.checkpointing:
            model.activation_checkpointing_enable()
        elif model.is_activation_checkpointing:
            model.activation_checkpointing_disable()
        if not variant.compile:
            return model
        if self.compiled is None:
            self.compiled = torch.compile(model)
        return self.compiled

    def _optimizer(self, fused: bool) -> torch.optim.Optimizer:
        if fused not in self.optimizers:  # one per kind, so Adam's state is allocated in the warmup steps
            parameters = self.workload.model.parameters()
            self.optimizers[fused] = torch.optim.Adam(parameters, lr=1e-6, fused=fused or None)
        return self.optimizers[fused]

    def step(self, variant: Variant) -> object:
        forward = self._prepare(variant)
        inputs = self.workload.inputs[variant.phase]
        if variant.phase == "eval":
            with torch.inference_mode(), autocast_context(variant.dtype, self.device):
                return forward(**inputs)
        optimizer = self._optimizer(variant.fused_optimizer)
        with autocast_context(variant.dtype, self.device):
            loss = forward(**inputs, labels=self.workload.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return None


STEP_CHILD_PREFIX = "step-child ms: "
# Steps a reused-memory variant runs before its first round: the heap takes about three steps to hold a step's blocks
# (fragmentation), and only then faults in nothing.
SETTLING_STEPS = 2


class StepChild:
    """A process that runs the reused-memory variants (`Variant.reuse_freed_memory`) one step at a time when told
    to, so that they take their turn in the interleaved rounds with glibc set up as in a training process, while the
    other variants run in this one with glibc's defaults. It builds the same workload (same seed)."""

    def __init__(self, args: argparse.Namespace):
        command = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--step-child", "--no-write"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()  # its settling steps done: none of them runs beside a measured one

    def _read(self) -> float:
        while line := self.process.stdout.readline():
            if line.startswith(STEP_CHILD_PREFIX):
                return float(line.removeprefix(STEP_CHILD_PREFIX))
        raise SystemExit(f"the reused-memory step process ended (exit status {self.process.wait()})")

    def step(self, index: int) -> float:
        """Run the `index`-th variant once; its time in ms."""
        self.process.stdin.write(f"{index}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def serve_steps(args: argparse.Namespace, device: torch.device, variants: list[Variant]) -> None:
    """The StepChild side: reuse freed memory, build the workload, settle the heap, then one step per index read."""
    enable_freed_memory_reuse()
    runner = Runner(build_workload(args.task, args.batch_size, args.num_clips, args.tiny, device), device)
    for variant in variants:
        if variant.reuse_freed_memory:
            for _ in range(SETTLING_STEPS):
                runner.step(variant)
    print(f"{STEP_CHILD_PREFIX}0", flush=True)  # ready
    for line in sys.stdin:
        start = time.perf_counter()
        runner.step(variants[int(line)])
        print(f"{STEP_CHILD_PREFIX}{(time.perf_counter() - start) * 1000:.3f}", flush=True)


def measure_interleaved(
    runner: Runner,
    variants: list[Variant],
    warmup: int,
    iters: int,
    memory: "PeakMemory",
    child: StepChild | None = None,
    all_variants: list[Variant] | None = None,
) -> list[Measurement]:
    """
    Round-robin over the variants, `warmup + iters` rounds: contention from other processes then hits every variant
    alike, and the ratios of medians stay meaningful on a shared machine. Reused-memory variants take their turn in
    `child` (`all_variants` gives their index there); their in-process peak is not measured (their heap keeps the
    last step's memory by design), only the isolated one.
    """
    device = runner.device
    results = {variant: Measurement(variant, [], []) for variant in variants}
    for round_index in range(warmup + iters):
        timed = round_index >= warmup
        for variant in variants:
            if variant.reuse_freed_memory:
                elapsed_ms, output, peak = child.step(all_variants.index(variant)), None, {"mib": float("nan")}
            else:
                with memory.measure(trim=False) as peak:
                    start = time.perf_counter()
                    output = runner.step(variant)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    elapsed_ms = (time.perf_counter() - start) * 1000
            log(
                f"{'timed' if timed else 'warmup'} round {round_index + 1 - (warmup if timed else 0)}: "
                f"{variant.phase} {variant.dtype} {variant.name}: {elapsed_ms:,.0f} ms, peak {peak['mib']:,.0f} MiB"
            )
            if timed:
                results[variant].times_ms.append(elapsed_ms)
                results[variant].peak_mib.append(peak["mib"])
                results[variant].output = output
    return list(results.values())


MEMORY_CHILD_PREFIX = "memory-child peak MiB: "


def measure_memory_child(args: argparse.Namespace, device: torch.device, variant: Variant, warmup: int) -> None:
    """In a fresh process: build the workload, run `variant` `max(warmup, 1)` times (Adam's state, the first-call
    allocations), then print the peak of one more step (of three for a reused-memory variant). Nothing else has run
    in the process, so its heap holds only what this variant left, as in a training or inference process that runs
    it."""
    if variant.reuse_freed_memory:
        enable_freed_memory_reuse()
    workload = build_workload(args.task, args.batch_size, args.num_clips, args.tiny, device)
    runner = Runner(workload, device)
    for _ in range(max(warmup, 1)):
        runner.step(variant)
    # A reused-memory heap, trimmed before the measure, grows back to what it keeps over a few steps.
    with PeakMemory(device).measure() as peak:
        for _ in range(1 + SETTLING_STEPS if variant.reuse_freed_memory else 1):
            runner.step(variant)
    print(f"{MEMORY_CHILD_PREFIX}{peak['mib']:.3f}", flush=True)


def measure_memory_isolated(args: argparse.Namespace, index: int, variant: Variant) -> float:
    """The peak of the `index`-th variant's step, measured by `measure_memory_child` in a subprocess."""
    command = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--memory-child", str(index), "--no-write"]
    completed = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(MEMORY_CHILD_PREFIX)]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"memory of {variant.phase} {variant.name} in its own process failed:\n{completed.stderr}")
    mib = float(lines[-1].removeprefix(MEMORY_CHILD_PREFIX))
    log(f"own process: {variant.phase} {variant.dtype} {variant.name}: peak {mib:,.0f} MiB")
    return mib


def count_flops(workload: Workload, phase: str) -> float:
    """
    FLOPs of one eval forward or one train step (forward + backward) of the workload, counted by
    `torch.utils.flop_counter.FlopCounterMode` on the first clip of each video and multiplied by the clips per
    video (the CNNs, over 99.9% of the FLOPs, are per clip; the transformer's share is slightly undercounted).
    """
    model = workload.model
    model.config.cnn_fast_inference = model.config.cnn_channels_last_training = False
    if model.is_activation_checkpointing:
        model.activation_checkpointing_disable()
    inputs = {name: tensor[:, :1] for name, tensor in workload.inputs[phase].items()}
    with FlopCounterMode(display=False) as counter:
        if phase == "eval":
            with torch.no_grad():
                model.eval()(**inputs)
        else:
            model.train()(**inputs, labels=workload.labels).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() * workload.num_clips


def parity(results: list[Measurement]) -> list[str]:
    """Largest differences of each fast eval variant's outputs from the plain port's (same dtype)."""
    plain = {r.variant.dtype: r.output for r in results if r.variant.phase == "eval" and r.variant.name == "plain"}
    lines = []
    for result in results:
        reference = plain.get(result.variant.dtype)
        if (
            result.variant.phase != "eval"
            or result.variant.name == "plain"
            or reference is None
            or result.output is None
        ):
            continue
        parts = []
        for field in ("clip_logits", "sequence_logits", "logits"):
            actual, expected = getattr(result.output, field), getattr(reference, field)
            if actual is None:
                continue
            difference = (actual.float() - expected.float()).abs().max().item()
            scale = expected.float().abs().max().item()
            parts.append(f"`{field}` {difference:.2e} (of max |value| {scale:.2f})")
        lines.append(f"{result.variant.dtype} {result.variant.name} vs plain: max abs difference " + ", ".join(parts))
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Environment description
# ----------------------------------------------------------------------------------------------------------------


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return (
            f"{torch.cuda.get_device_name(device)} ({properties.total_memory / 2**30:.0f} GiB, compute capability "
            f"{properties.major}.{properties.minor}; CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}, cudnn.benchmark={torch.backends.cudnn.benchmark})"
        )
    return f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


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

PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp32": 67.0}, "A100": {"bf16": 312.0}}


def peak_tflops(device: torch.device, dtype: str, override: float | None) -> float | None:
    """Dense peak of the device for `dtype` (datasheet figures of known GPUs, or --peak-tflops); None if unknown."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks.get(dtype) for gpu, peaks in PEAK_TFLOPS.items() if gpu in name), None)


def format_table(
    results: list[Measurement], workload: Workload, flops: dict[str, float], peaks: dict[str, float | None]
) -> str:
    isolated = any(r.isolated_peak_mib is not None for r in results)
    header = (
        "| phase | dtype | variant | median (ms) | min (ms) | videos/s | clips/s | speed-up vs plain "
        "| peak mem (MiB) | mem vs plain |"
        + (" in-process (MiB) | in-process vs plain |" if isolated else "")
        + " TFLOP/s | MFU |"
    )
    rows = [header, "|" + "---|" * (14 if isolated else 12)]
    plain = {(r.variant.phase, r.variant.dtype): r for r in results if r.variant.name == "plain"}
    for r in results:
        reference = plain[(r.variant.phase, r.variant.dtype)]
        seconds = r.median_ms / 1000
        achieved = flops[r.variant.phase] / seconds / 1e12
        peak = peaks.get(r.variant.dtype)
        memory_ratio = r.peak / reference.peak if reference.peak > 0 else float("nan")
        in_process = max(r.peak_mib)  # nan for a reused-memory variant
        in_process_ratio = in_process / max(reference.peak_mib) if max(reference.peak_mib) > 0 else float("nan")
        rows.append(
            f"| {r.variant.phase} | {r.variant.dtype} | {r.variant.name} | {r.median_ms:,.0f} | {min(r.times_ms):,.0f} "
            f"| {workload.batch_size / seconds:,.3f} | {workload.clips_per_batch / seconds:,.2f} "
            f"| {reference.median_ms / r.median_ms:.2f}x {format_memory(r.peak, memory_ratio)}"
            + (format_memory(in_process, in_process_ratio) if isolated else "")
            + f"| {achieved:.3f} "
            f"| {'n/a' if peak is None else f'{achieved / peak:.1%}'} |"
        )
    return "\n".join(rows)


def format_memory(mib: float, ratio: float) -> str:
    """The peak and ratio cells; n/a for a reused-memory variant's in-process peak (its heap keeps the last step's
    memory by design, so a step has no peak of its own)."""
    if math.isnan(mib):
        return "| n/a | n/a "
    return f"| {mib:,.0f} | {ratio:.2f}x "


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
    flops: dict[str, float]
    peaks: dict[str, float | None]


def block_key(args: argparse.Namespace, device: torch.device) -> str:
    """The table a run owns: one per task, device type and workload (tiny configs and non-default shapes apart)."""
    shape = ""
    if args.batch_size != 1:
        shape += f"-batch{args.batch_size}"
    if args.num_clips is not None and args.num_clips != default_num_clips(args.task):
        shape += f"-clips{args.num_clips}"
    if args.malloc_mmap_threshold_kib is not None:
        shape += f"-mmap{args.malloc_mmap_threshold_kib}k"
    if args.phases != PHASES:
        shape += "-" + "-".join(args.phases)
    return f"{args.task}{'-tiny' if args.tiny else ''}{shape}/{device.type}"


PHASES = ["eval", "train"]

# glibc's mallopt parameter number (malloc.h)
M_MMAP_THRESHOLD = -3


def set_malloc_mmap_threshold(kib: int) -> None:
    """Serve every allocation of `kib` KiB or more with its own mmap, returned to the OS when freed. glibc's default
    threshold grows with the blocks freed (up to 32 MiB), so most activations come from the heap, which holds on to
    freed memory between live blocks: the peak RSS then includes that as well as the live tensors."""
    if not ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, kib * 1024):
        raise SystemExit(f"--malloc-mmap-threshold-kib {kib}: mallopt refused it")


def describe_allocator(args: argparse.Namespace, device: torch.device) -> str:
    if device.type == "cuda":
        return "torch's CUDA caching allocator"
    if args.malloc_mmap_threshold_kib is None:
        return "glibc malloc with its defaults (dynamic mmap threshold, up to 32 MiB)"
    return (
        f"glibc malloc with `mallopt(M_MMAP_THRESHOLD, {args.malloc_mmap_threshold_kib} KiB)` "
        f"(`--malloc-mmap-threshold-kib`; the same as `MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold_kib * 1024}` "
        "in the environment): blocks from that size go back to the OS when freed, so the peak RSS follows the live "
        "tensors"
    )


def format_report(info: RunInfo, results: list[Measurement]) -> str:
    """The markdown heading, run description and results table of one run."""
    args, device, workload = info.args, info.device, info.workload
    model = workload.model
    shapes = "; ".join(
        f"{phase}: " + ", ".join(f"{name} {tuple(tensor.shape)}" for name, tensor in inputs.items())
        for phase, inputs in workload.inputs.items()
    )
    threads = f"torch threads {torch.get_num_threads()}"
    lines = [
        f"### {args.task}{' (tiny config)' if args.tiny else ''} on {device.type.upper()}",
        "",
        f"- Command: `{command_line()}` (run time {info.wall_s:.0f} s, imports excluded)",
        f"- Date: {utc_timestamp()}; {library_versions(torch, transformers)}",
        f"- Device: {describe_device(device)}",
    ]
    if device.type == "cpu":
        lines.append(
            f"- CPU flags: {describe_cpu_flags()} (torch CPU capability: {torch.backends.cpu.get_cpu_capability()})"
        )
    lines += [
        f"- TF32: {describe_tf32()}" + ("; not applicable on CPU" if device.type == "cpu" else ""),
        f"- Model: `{type(model).__name__}`, {count_parameters(model):,} parameters, attention "
        f"`{model.config._attn_implementation}`; batch size {workload.batch_size}, "
        f"clips per video {workload.num_clips}, inputs {shapes}",
        f"- Method: {info.warmup} warmup + {info.iters} timed rounds; each round runs every variant once in turn "
        f"(interleaved, so contention hits all alike; {threads}); medians. One model and one set of inputs for all "
        "variants (weights random, BatchNorm statistics from one training-mode pass). Eval: `model.eval()` under "
        "`torch.inference_mode()`. Train step: `model.train()`, forward with labels, backward, Adam step, "
        "`zero_grad`. Variants: *plain* = `config.cnn_fast_inference = False` in eval, "
        "`cnn_channels_last_training = False` in training (contiguous NCDHW, BatchNorm after each convolution, "
        "`torch.optim.Adam` default implementation); *fast* = the defaults: in eval `cnn_fast_inference = True` "
        "(channels-last CNNs, BatchNorm folded into the convolutions), in training `cnn_channels_last_training = "
        "True` and `Adam(fused=True)` (what the recipes' optimizer picks) and, on the CPU, freed memory reused (what "
        "the trainers do); *channels-last* = that training forward with the default Adam; *channels-last + fused "
        "Adam* = *fast* without the reuse of freed memory; "
        "*freed memory reused* (on the CPU; part of *fast* in training, as the trainers do it, and what "
        "avbert-evaluate adds in eval) = glibc's mmap and trim thresholds at their largest "
        "(`avbert.training.heap.enable_freed_memory_reuse`), so a step reuses the memory the last one freed instead of "
        "faulting in fresh pages; process-wide, so those variants run in a second process that takes its turn in the "
        f"same rounds (same seed, so the same weights and inputs; {SETTLING_STEPS} settling steps per variant first: "
        "the heap takes that long to hold a step); "
        "*checkpointing* = `model.activation_checkpointing_enable()` (every CNN bottleneck "
        "block, both CNN stems and the transformer layer recomputed in the backward pass); *compile* = "
        "`torch.compile(model)`. bf16: `torch.autocast(device_type, dtype=torch.bfloat16)` around the forward, fp32 "
        "weights.",
        f"- FLOPs (`torch.utils.flop_counter.FlopCounterMode`, counted on one clip per video x clips): eval "
        f"{info.flops['eval'] / 1e9:,.4g} GFLOP, train step {info.flops['train'] / 1e9:,.4g} GFLOP per batch. MFU = "
        "TFLOP/s / the device's dense peak for the dtype"
        + ("" if any(info.peaks.values()) else " (n/a: no peak known for this device; pass --peak-tflops)")
        + ".",
        f"- Peak memory: {info.memory.describe(any(r.isolated_peak_mib is not None for r in results))}.",
        f"- Allocator: {describe_allocator(args, device)}.",
    ]
    if hasattr(os, "getloadavg"):
        lines.append(
            f"- Load average at the end (1, 5, 15 min): {format_load(separator=', ')} on {os.cpu_count()} cores"
        )
    if info.note:
        lines.append(f"- Note: {info.note}")
    lines += [f"- Parity: {line}." for line in parity(results)]
    lines += ["", format_table(results, workload, info.flops, info.peaks)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


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
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (CPU 1, GPU 5)")
    parser.add_argument("--iters", type=int, default=None, help="timed rounds (CPU 3, GPU 20)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure torch.compile variants (default: on CUDA only; on a CPU compiling the full model takes "
        "minutes)",
    )
    parser.add_argument(
        "--tf32",
        choices=("default", "on", "off"),
        default="default",
        help="CUDA fp32 matmuls and convolutions: torch's defaults, or TF32 allowed / forbidden (stated in the report)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for the MFU column")
    parser.add_argument("--tiny", action="store_true", help="tiny config for a smoke run in seconds")
    parser.add_argument("--no-write", action="store_true", help="print the results without updating BENCHMARKS.md")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument(
        "--phases",
        type=lambda value: [phase for phase in PHASES if phase in value.split(",")],
        default=PHASES,
        help="comma-separated subset of eval,train to measure (default both; a subset gets its own table)",
    )
    parser.add_argument(
        "--malloc-mmap-threshold-kib",
        type=int,
        default=None,
        help="CPU: glibc mallopt(M_MMAP_THRESHOLD) in KiB, so the peak RSS follows the live tensors (own table)",
    )
    parser.add_argument(
        "--memory",
        choices=("isolated", "in-process"),
        default="isolated",
        help="CPU peak memory: each variant's step in a fresh process of its own (default: what a training or "
        "inference process running that variant needs), or in the timed rounds (after the other variants ran, so "
        "it includes heap they left to glibc). CUDA: always the allocator's peak in the timed rounds",
    )
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)  # internal: one variant
    parser.add_argument("--step-child", action="store_true", help=argparse.SUPPRESS)  # internal: StepChild
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "BENCHMARKS.md", help="file to update (default: repo BENCHMARKS.md)"
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the --memory isolated subprocesses
    if args.num_clips is None:
        args.num_clips = default_num_clips(args.task)
    for name in ("batch_size", "num_clips", "iters", "threads", "malloc_mmap_threshold_kib"):
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
    if args.malloc_mmap_threshold_kib is not None:
        set_malloc_mmap_threshold(args.malloc_mmap_threshold_kib)
    device = resolve_device(args.device)
    dtypes, note = resolve_dtypes(args.dtypes, device, args.tiny)
    if "bf16" in dtypes and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SystemExit("This GPU does not support bf16; pass --dtypes fp32.")
    default_warmup, default_iters = DEFAULT_ITERS[device.type]
    warmup = default_warmup if args.warmup is None else args.warmup
    iters = default_iters if args.iters is None else args.iters

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotuned convolutions for the fixed shapes of a run
        if args.tf32 != "default":
            precision = "tf32" if args.tf32 == "on" else "ieee"
            torch.backends.cuda.matmul.fp32_precision = precision
            torch.backends.cudnn.conv.fp32_precision = precision
    compile_model = device.type == "cuda" if args.compile is None else args.compile

    torch.manual_seed(0)
    variants = [
        variant
        for variant in build_variants(dtypes, compile_model, device.type == "cpu")
        if variant.phase in args.phases
    ]
    if args.memory_child is not None:
        measure_memory_child(args, device, variants[args.memory_child], warmup)
        return
    if args.step_child:
        serve_steps(args, device, variants)
        return
    log(f"Building {args.task}{' (tiny)' if args.tiny else ''} on {device} ...")
    workload = build_workload(args.task, args.batch_size, args.num_clips, args.tiny, device)
    memory = PeakMemory(device)
    flops = {phase: count_flops(workload, phase) for phase in ("eval", "train")}
    runner = Runner(workload, device)
    child = StepChild(args) if any(variant.reuse_freed_memory for variant in variants) else None
    # Eval first: training steps change the weights, and the parity check compares eval outputs.
    results = []
    for phase in args.phases:
        phase_variants = [variant for variant in variants if variant.phase == phase]
        results += measure_interleaved(runner, phase_variants, warmup, iters, memory, child, variants)
    if child is not None:
        child.close()
    if device.type == "cpu" and args.memory == "isolated":
        for result in results:
            result.isolated_peak_mib = measure_memory_isolated(args, variants.index(result.variant), result.variant)
    peaks = {dtype: peak_tflops(device, dtype, args.peak_tflops) for dtype in dtypes}

    info = RunInfo(args, device, workload, memory, warmup, iters, note, time.perf_counter() - STARTED, flops, peaks)
    report = format_report(info, results)
    print(report)
    if not args.no_write:
        replace_model_block(args.output, block_key(args, device), report)
        log(f"Updated {args.output}")


if __name__ == "__main__":
    main()
