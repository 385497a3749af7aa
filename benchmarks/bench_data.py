"""Measure the training input pipeline (decode + process) in samples/s, folder vs shards, per DataLoader worker and for
N workers, and the shard readers' raw read rate; record it in BENCHMARKS.md.

Examples:
    .venv/bin/python benchmarks/bench_data.py                       # shared videos, 3 timed rounds
    .venv/bin/python benchmarks/bench_data.py --rounds 1 --workers 0,2 --no-write

A sample is one training input of the Kinetics-Sounds recipe: `AVBertProcessor` with 10 clips x 32 frames, random
short-side scale in [128, 160], random 112 crop and flip, and the 10 log-mel windows under the clips
(`MediaTransform(processor, "audio-visual", train=True, defer_normalization=True)`, what `avbert-train` runs in its
DataLoader workers).
The videos are the shared real videos with sound (`../shared/data/videos`), repeated to `--samples` samples.

- folder: `datasets.Dataset` of paths with `with_transform(MediaTransform)` (`load_media_dataset` rows), DataLoader;
  uint8 frames out of the workers (`defer_normalization=True`, what `avbert-train` sends).
- shards: the same files written by `write_shards` (WebDataset tar, bytes as they are) and read by
  `ShardedVideoDataset` (shuffle buffer 16), same transform, same DataLoader settings.
- transcoded shards: the same files re-encoded by `avbert-prepare shards --transcode kinetics-sounds`; and, at the
  most workers, end to end: batches of 5 (the recipe's) through the trainer's input step (`normalize_clips`).
- workers 0 is the main process alone with 1 torch thread: the rate of ONE worker. N workers run N processes.
- readers: raw samples/s (bytes only, no decoding) of the shard libraries considered for `avbert.data.shards`
  over the same files, locally and from an HTTP server on 127.0.0.1; litdata and mosaicml-streaming are measured
  when installed (mosaicml-streaming 0.13.0 requires numpy<2.2 and cannot be installed beside numpy 2.4.6).

- recipes (`--recipes`, or alone with `--recipes-only`): one worker (main process, 1 torch thread) per fine-tuning
  recipe (Kinetics-Sounds audio-visual, UCF101 visual, ESC-50 audio) on shared source files: samples/s of
  `MediaTransform` with float32 frames (what `AVBertProcessor` returns) and with uint8 frames
  (`defer_normalization=True`, what `avbert-train` sends; the trainer normalizes on the GPU), the floor of the same
  files (`ffmpeg -threads 1` decoding them and converting to RGB, or to float samples for sound), the bytes per
  sample that cross the worker boundary, and the workers one GPU needs at the issue's step rate (one H100 trains
  about 280 Kinetics-Sounds videos/s at 40% of bf16 peak, ~1.4 TFLOP per video step). `--baseline DIR` runs the
  same table with the avbert of another checkout (a subprocess per round, interleaved), for a before/after in one
  run.

The ratio to the model: clips/s of one worker (samples/s x 10 clips) over the model's training clips/s read from
bench_model's tables in BENCHMARKS.md; on a GPU node that ratio is the number of workers a GPU needs. The script owns
the part of BENCHMARKS.md between `<!-- bench_data:start -->` and `<!-- bench_data:end -->`.
"""

import argparse
import functools
import http.server
import inspect
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import webdataset as wds
from _report import (
    REPO_ROOT,
    SHARED_DIR,
    STARTED,
    VIDEOS_DIR,
    available_cores,
    command_line,
    describe_cpu,
    format_load,
    publish,
    utc_timestamp,
)
from torch.utils.data import DataLoader

from avbert import AVBertFeatureExtractor, AVBertProcessor, AVBertVideoProcessor
from avbert.data.shards import ShardedVideoDataset, load_manifests, write_shards
from avbert.data.synthetic import make_synthetic_av_dataset
from avbert.data.transform import AVBertDataCollator, MediaTransform
from avbert.training.heap import LARGEST_THRESHOLD, enable_freed_memory_reuse

# Real videos with sound, 10-18 s, 320x240 to 480x360.
DEFAULT_VIDEOS = (
    "activitynet/v_GGSY1Qvo990.mp4",
    "activitynet/v_ZNVhz7ctTq0.mp4",
    "kinetics400/R6llTwEh07w.mp4",
    "kinetics400/SOX5yA1l24A.mp4",
    "kinetics400/WUzgd7C1pWA.mp4",
    "kinetics400/flipping_a_pancake.mkv",
)
SECTION = "bench_data"
NUM_CLIPS = 10
READER_SAMPLES = 256
# (modality, files under ../shared/data) of each fine-tuning recipe's source files.
RECIPE_FILES = {
    "kinetics-sounds": (
        "audio-visual",
        (
            "videos/kinetics400/R6llTwEh07w.mp4",
            "videos/kinetics400/SOX5yA1l24A.mp4",
            "videos/kinetics400/WUzgd7C1pWA.mp4",
        ),
    ),
    "ucf101": (
        "visual",
        ("videos/ucf101/v_ApplyEyeMakeup_g01_c01.avi", "videos/ucf101/v_SoccerJuggling_g23_c01.avi"),
    ),
    "esc50": ("audio", ("esc50/audio/2-103426-A-3.flac", "esc50/audio/2-103427-A-3.flac")),
}
STEP_VARIANT = "shards, transcoded, batches of 5 into the trainer's input step"
# The step rate: one H100 at 40% of bf16 peak, ~1.4 TFLOP per Kinetics-Sounds video train step.
GPU_SAMPLES_PER_SECOND = 280


def kinetics_sounds_processor() -> AVBertProcessor:
    """The Kinetics-Sounds recipe's processor: 10 clips x 32 frames with their sound."""
    return AVBertProcessor(
        feature_extractor=AVBertFeatureExtractor(num_clips=NUM_CLIPS),
        video_processor=AVBertVideoProcessor(num_clips=NUM_CLIPS, num_frames=32, load_audio_in_video=True),
    )


class _PathRows(torch.utils.data.Dataset):
    """What `load_media_dataset(...).with_transform(MediaTransform)` gives, without the class-folder layout."""

    def __init__(self, files: list[Path], transform: MediaTransform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        row = self.transform({"path": [str(self.files[index])], "label": [0]})
        return {key: value[0] for key, value in row.items()}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _floor_seconds(path: Path, modality: str) -> tuple[float, float]:
    """Wall and CPU seconds of ``ffmpeg -threads 1`` decoding the whole file and converting it to RGB (sound: float
    samples)."""
    out = ["-an", "-f", "rawvideo", "-pix_fmt", "rgb24"] if modality != "audio" else ["-vn", "-f", "f32le", "-ac", "1"]
    start, cpu = time.perf_counter(), _children_cpu_seconds()
    subprocess.run(
        ["ffmpeg", "-v", "error", "-threads", "1", "-i", str(path), *out, "-"], stdout=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - start, _children_cpu_seconds() - cpu


def _sample_bytes(item: dict) -> int:
    """Bytes of the tensors of one sample: what a DataLoader worker hands to the main process."""
    return sum(value.numel() * value.element_size() for value in item.values() if isinstance(value, torch.Tensor))


def _transcoded_shards(
    recipe: str, modality: str, files: list[Path], folder: Path, shard_samples: int | None = None
) -> tuple[list[Path], object]:
    """``files`` re-encoded at the recipe's training geometry (what `avbert-prepare shards --transcode` does) and
    written into shards: the re-encoded files (for the floor) and the shards' manifest; None without the transcode
    module (a --baseline checkout from before it)."""
    try:
        from avbert.data.transcode import TranscodeSettings, default_processors, transcode_files
    except ImportError:
        return [], None
    settings = TranscodeSettings.for_recipe(recipe, modality, *default_processors(modality))
    outputs, failed = transcode_files(files, settings, folder / "files")
    assert not failed, failed
    write_shards(
        outputs, [0] * len(outputs), folder / "shards", shard_samples=shard_samples, transcode=settings.to_dict()
    )
    return outputs, load_manifests(str(folder / "shards"))


def _read_files(files: list[Path], transform: MediaTransform) -> None:
    for file in files:
        row = transform({"path": [str(file)], "label": [0]})
        assert row["error"] == [None], row["error"]


def _read_shards(manifest: object, transform: MediaTransform) -> None:
    for item in ShardedVideoDataset(manifest, transform, shuffle_buffer=0):
        assert item["error"] is None, item["error"]


def _time_passes(read: Callable[[MediaTransform], None], count: int, transform: MediaTransform) -> tuple[float, float]:
    """(samples/s, samples per CPU second) of one pass of ``read`` over ``count`` samples."""
    start, cpu = time.perf_counter(), time.process_time()
    read(transform)
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def recipe_rates(rounds: int) -> dict[str, dict]:
    """Per recipe, on the source files and (``"RECIPE, transcoded"``) on shards of the same files re-encoded at the
    recipe's training geometry: samples/s of one worker (float frames, uint8 frames), the ffmpeg floor's samples/s on
    the same files (the source files, or the re-encoded ones) and the bytes per sample, each rate the median over
    ``rounds`` passes (and all passes); ``cpu_rates``: the same per CPU second of the process (ffmpeg's: of the
    child), which a shared machine disturbs much less."""
    deferrable = "defer_normalization" in inspect.signature(MediaTransform).parameters  # absent before uint8 frames
    results = {}
    for recipe, (modality, names) in RECIPE_FILES.items():
        files = [SHARED_DIR / "data" / name for name in names]
        if not all(file.is_file() for file in files):
            continue
        processor = AVBertFeatureExtractor(num_clips=NUM_CLIPS) if modality == "audio" else kinetics_sounds_processor()
        variants = {"float": MediaTransform(processor, modality, train=True)}
        if deferrable and modality != "audio":
            variants["uint8"] = MediaTransform(processor, modality, train=True, defer_normalization=True)
        with tempfile.TemporaryDirectory() as scratch:
            transcoded, manifest = _transcoded_shards(recipe, modality, files, Path(scratch))
            inputs = {recipe: (functools.partial(_read_files, files), files)}
            if manifest is not None:
                inputs[f"{recipe}, transcoded"] = (functools.partial(_read_shards, manifest), transcoded)
            for name, (read, floor_files) in inputs.items():
                passes: dict[str, list[float]] = {variant: [] for variant in [*variants, "floor"]}
                cpu_passes: dict[str, list[float]] = {variant: [] for variant in [*variants, "floor"]}
                sizes = {}
                for variant, transform in variants.items():  # warm up (imports, caches) and measure the sample size
                    row = transform({"path": [str(floor_files[0])], "label": [0]})
                    assert row["error"] == [None], row["error"]
                    sizes[variant] = _sample_bytes({key: values[0] for key, values in row.items()})
                for _ in range(rounds):
                    for variant, transform in variants.items():
                        rate, cpu_rate = _time_passes(read, len(files), transform)
                        passes[variant].append(rate)
                        cpu_passes[variant].append(cpu_rate)
                    wall, cpu = zip(*[_floor_seconds(file, modality) for file in floor_files], strict=True)
                    passes["floor"].append(len(files) / sum(wall))
                    cpu_passes["floor"].append(len(files) / sum(cpu))
                results[name] = {
                    "modality": modality,
                    "files": len(files),
                    "rates": passes,
                    "cpu_rates": cpu_passes,
                    "bytes": sizes,
                    "file_bytes": sum(file.stat().st_size for file in floor_files) / len(files),
                }
    return results


# glibc's own variables for what `enable_freed_memory_reuse` sets: a baseline checkout may not have that function.
FREED_MEMORY_REUSE_ENV = dict.fromkeys(("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"), str(LARGEST_THRESHOLD))


def baseline_recipe_rates(checkout: Path, rounds: int, reuse_freed_memory: bool) -> dict[str, dict]:
    """``recipe_rates`` with the avbert of another checkout, in a subprocess (its own imports), with the same malloc
    settings as this process."""
    env = {**os.environ, "PYTHONPATH": str(checkout), **(FREED_MEMORY_REUSE_ENV if reuse_freed_memory else {})}
    command = [sys.executable, __file__, "--recipes-only", "--json", "--rounds", str(rounds), "--no-reuse-freed-memory"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def _rate(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def describe_allocator(reuse_freed_memory: bool) -> str:
    if reuse_freed_memory:
        return (
            "glibc malloc keeping freed memory (`enable_freed_memory_reuse()`, as the trainers do on the CPU before "
            "their DataLoader workers fork; `--no-reuse-freed-memory` for glibc's defaults)"
        )
    return "glibc malloc with its defaults (`--no-reuse-freed-memory`)"


def recipe_report(
    results: dict[str, dict], baseline: dict[str, dict] | None, rounds: int, reuse_freed_memory: bool
) -> list[str]:
    lines = [
        f"### One worker per recipe, source files and transcoded shards ({rounds} pass(es) over each recipe's files, "
        "interleaved)",
        "",
        "samples/s: median (range). Floor: `ffmpeg -threads 1` decoding the same files and converting them to RGB "
        "(sound: float samples), as samples/s; x floor = the floor's samples/s over ours (per-sample CPU cost over "
        f"the floor's). Workers/GPU: {GPU_SAMPLES_PER_SECOND} samples/s (one H100 on the Kinetics-Sounds step, the "
        "issue's estimate) over one worker's rate.",
        "",
        "samples/CPU-s: the same per CPU second of the process (ffmpeg: of the child process); a shared machine "
        "slows the wall clock but hardly the CPU time, so these are the figures to compare.",
        "",
        f"Allocator: {describe_allocator(reuse_freed_memory)}.",
        "",
        "RECIPE, transcoded: the same files re-encoded at the recipe's training geometry (`avbert-prepare shards "
        "--transcode RECIPE`: short side 160, 15 fps, mono 44.1 kHz sound; docs/training.md), read from shards by "
        "`ShardedVideoDataset`; its floor is ffmpeg on the re-encoded files. KB/file: the mean size of the files "
        "read.",
        "",
        "| recipe | frames out | samples/s | samples/CPU-s | x floor (CPU) | MB/sample | workers/GPU (CPU) | "
        "floor samples/CPU-s | KB/file |"
        + (" baseline samples/CPU-s | baseline x floor (CPU) | speed-up (CPU) |" if baseline else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if baseline else ""),
    ]
    for recipe, result in results.items():
        floor = statistics.median(result["cpu_rates"]["floor"])
        old = (baseline or {}).get(recipe)
        for name, size in result["bytes"].items():
            rate = statistics.median(result["cpu_rates"][name])
            cells = [
                recipe,
                name if result["modality"] != "audio" else "(sound only)",
                _rate(result["rates"][name]),
                _rate(result["cpu_rates"][name]),
                f"{floor / rate:.2f}x",
                f"{size / 1e6:.1f}",
                f"{GPU_SAMPLES_PER_SECOND / rate:.0f}",
                f"{floor:.2f}",
                f"{result['file_bytes'] / 1e3:.0f}" if "file_bytes" in result else "",
            ]
            if baseline:
                if old is not None and "float" in old.get("cpu_rates", {}):
                    old_rate = statistics.median(old["cpu_rates"]["float"])
                    old_floor = statistics.median(old["cpu_rates"]["floor"])
                    cells += [
                        _rate(old["cpu_rates"]["float"]),
                        f"{old_floor / old_rate:.2f}x",
                        f"{rate / old_rate:.2f}x",
                    ]
                else:
                    cells += ["", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    if baseline:
        lines += [
            "",
            "Baseline: the float frames of the other checkout (`--baseline`), the same files, in the same run.",
        ]
    return lines


def _drain(loader: DataLoader) -> int:
    return sum(batch["labels"].shape[0] for batch in loader)


def _drain_into_step(loader: DataLoader, video_processor: AVBertVideoProcessor) -> int:
    """Samples through the trainer's input step: each batch's uint8 clips finished by ``normalize_clips`` on the main
    process (what ``DeviceNormalizationMixin`` does on the model's device; here the CPU), the model step left out."""
    count = 0
    for batch in loader:
        pixels = video_processor.normalize_clips(batch["pixel_values"], batch.pop("clip_jitter", None))
        assert pixels.dtype == torch.float32
        count += batch["labels"].shape[0]
    return count


def pipeline_rates(
    files: list[Path], shards: Path, transcoded: Path | None, workers: list[int], rounds: int
) -> dict[tuple[str, int], list]:
    """samples/s of every (source, workers) variant, interleaved per round: uint8 frames out of the workers (what
    `avbert-train` sends), from the folder, the shards and the transcoded shards; and, at the most workers, the
    transcoded shards in batches of the recipe's 5 through the trainer's input step."""
    processor = kinetics_sounds_processor()
    transform = MediaTransform(processor, "audio-visual", train=True, defer_normalization=True)
    manifests = {"shards": load_manifests(str(shards))}
    if transcoded is not None:
        manifests["shards, transcoded"] = load_manifests(str(transcoded))
    variants: dict[tuple[str, int], Callable[[], int]] = {}

    def loader(dataset: torch.utils.data.Dataset, n: int, batch_size: int = 1, **kwargs) -> DataLoader:
        # fork: Linux's default, what the Trainer's DataLoader uses
        context = {"multiprocessing_context": "fork"} if n else {}
        collate = AVBertDataCollator()
        return DataLoader(dataset, batch_size=batch_size, num_workers=n, collate_fn=collate, **context, **kwargs)

    for n in workers:
        variants["folder", n] = lambda n=n: _drain(loader(_PathRows(files, transform), n, shuffle=True))
        for name, manifest in manifests.items():
            variants[name, n] = lambda n=n, manifest=manifest: _drain(
                loader(ShardedVideoDataset(manifest, transform, batch_size=1, num_workers=n, shuffle_buffer=16), n)
            )
    if transcoded is not None:
        n, batch = max(workers), 5
        variants[STEP_VARIANT, n] = lambda: _drain_into_step(
            loader(
                ShardedVideoDataset(
                    manifests["shards, transcoded"], transform, batch_size=batch, num_workers=n, shuffle_buffer=16
                ),
                n,
                batch_size=batch,
            ),
            processor.video_processor,
        )
    rates: dict[tuple[str, int], list] = {key: [] for key in variants}
    for _ in range(rounds):
        for key, run in variants.items():
            start = time.perf_counter()
            count = run()
            rates[key].append(count / (time.perf_counter() - start))
    return rates


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def reader_rates(folder: Path, rounds: int) -> tuple[dict[str, list[float]], dict[str, float], int]:
    """Raw read samples/s of each shard library over READER_SAMPLES synthetic videos; and the write seconds."""
    source = make_synthetic_av_dataset(
        folder / "src", num_classes=4, videos_per_class=READER_SAMPLES // 4, duration=2.0, test_fraction=0
    )
    files = sorted(source.rglob("*.mp4"))
    total_bytes = sum(f.stat().st_size for f in files)
    writes: dict[str, float] = {}
    start = time.perf_counter()
    write_shards(files, [0] * len(files), folder / "wds", shard_samples=32)
    writes["webdataset (tar)"] = time.perf_counter() - start
    urls = sorted(str(p) for p in (folder / "wds").glob("shard-*.tar"))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder / "wds"))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    http_urls = [f"http://127.0.0.1:{server.server_port}/{Path(u).name}" for u in urls]

    def webdataset_read(shard_urls: list[str]) -> int:
        return sum(1 for _ in wds.tarfile_to_samples()(iter([{"url": u} for u in shard_urls])))

    def datasets_read(shard_urls: list[str]) -> int:
        from datasets import load_dataset

        return sum(1 for _ in load_dataset("webdataset", data_files=shard_urls, split="train", streaming=True))

    readers: dict[str, Callable[[], int]] = {
        "webdataset, local": lambda: webdataset_read(urls),
        "webdataset, HTTP": lambda: webdataset_read(http_urls),
        "datasets streaming (webdataset builder), local": lambda: datasets_read(urls),
        "datasets streaming (webdataset builder), HTTP": lambda: datasets_read(http_urls),
    }
    try:
        import litdata

        start = time.perf_counter()
        litdata.optimize(
            fn=_litdata_item,
            inputs=[str(f) for f in files],
            output_dir=str(folder / "lit"),
            chunk_bytes="64MB",
            num_workers=1,
        )
        writes["litdata (optimize)"] = time.perf_counter() - start
        readers["litdata, local"] = lambda: sum(1 for _ in litdata.StreamingDataset(str(folder / "lit")))
    except ImportError:
        pass
    rates: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(rounds):
        for name, read in readers.items():
            start = time.perf_counter()
            count = read()
            assert count == len(files), (name, count)
            rates[name].append(count / (time.perf_counter() - start))
    server.shutdown()
    return rates, writes, total_bytes


def _litdata_item(path: str) -> dict:
    return {"media": Path(path).read_bytes(), "label": 0}


def model_train_clips_per_second(benchmarks: Path) -> list[tuple[str, float]]:
    """(table title, fp32 train clips/s) of bench_model's 10-clip tables in BENCHMARKS.md."""
    if not benchmarks.is_file():
        return []
    found = []
    for block in re.findall(r"### (.+?)\n(.*?)(?=\n### |\n<!-- bench_model:end)", benchmarks.read_text(), re.S):
        title, body = block
        if "clips per video 10" not in body:
            continue
        for line in body.splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells and cells[0] in ("fp32", "bf16") and len(cells) >= 6:
                found.append((f"{title}, {cells[0]}", float(cells[5].replace(",", ""))))
    return found


def report(args, rates, readers, writes, reader_bytes, model, num_files, load) -> str:
    median = {key: statistics.median(values) for key, values in rates.items()}
    lines = [
        "## Input pipeline (`benchmarks/bench_data.py`)",
        "",
        f"- Command: `{command_line()}` (run time {time.perf_counter() - STARTED:.0f} s)",
        f"- Date: {utc_timestamp()}; torch {torch.__version__}, webdataset {wds.__version__}",
        f"- CPU: {describe_cpu()}, {available_cores()} cores available; load average {load[0]} at the start, {load[1]} "
        "at the end. Compare figures within this table, not across runs.",
        f"- Allocator: {describe_allocator(args.reuse_freed_memory)}.",
        f"- Sample: one Kinetics-Sounds training input (10 clips x 32 frames, random scale/crop/flip, 112 x 112, and "
        f"10 log-mels) decoded + processed by `MediaTransform(defer_normalization=True)` (uint8 frames, what "
        f"`avbert-train` sends); {num_files} samples per pass from {len(args.videos)} real videos with sound; "
        "transcoded: the same files after `avbert-prepare shards --transcode kinetics-sounds`.",
        f"- Method: {args.rounds} timed pass(es) per variant, variants interleaved; cells are the median samples/s "
        "(and the range). workers 0 = the main process alone, 1 torch thread: the rate of one DataLoader worker.",
        "",
        "| workers | folder samples/s | shards samples/s | transcoded shards samples/s | shards / folder | "
        "transcoded / folder |",
        "|---|---|---|---|---|---|",
    ]
    transcoded = ("shards, transcoded", args.workers[0]) in rates

    def cell(key: tuple[str, int]) -> str:
        values = rates.get(key)
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})" if values else "-"

    for n in args.workers:
        ratio = f"{median['shards, transcoded', n] / median['folder', n]:.2f}x" if transcoded else "-"
        lines.append(
            f"| {n} | {cell(('folder', n))} | {cell(('shards', n))} | {cell(('shards, transcoded', n))} | "
            f"{median['shards', n] / median['folder', n]:.2f}x | {ratio} |"
        )
    step = [key for key in rates if key[0] == STEP_VARIANT]
    if step:
        lines += [
            "",
            f"End to end, {step[0][1]} workers: {cell(step[0])} samples/s (transcoded shards, batches of 5 as the "
            "Kinetics-Sounds recipe, uint8 clips finished by `normalize_clips` in the main process as the trainer's "
            "input step does on the model's device; the model step itself is left out: on this CPU one takes "
            "seconds, on a GPU ~18 ms per 5 videos at the rate below).",
        ]
    source = "shards, transcoded" if transcoded else "shards"
    per_worker = median[source, args.workers[0]] * NUM_CLIPS
    lines += ["", f"One worker (workers {args.workers[0]}, {source}) delivers {per_worker:.1f} clips/s."]
    if model:
        for title, clips in model:
            lines.append(
                f"- Model training ({title}, bench_model): {clips:.2f} clips/s -> {per_worker / clips:.1f} clips "
                f"decoded per clip trained: one worker keeps {per_worker / clips:.1f} such models fed, "
                f"{max(1, round(clips / per_worker + 0.49))} worker(s) needed per model."
            )
    lines.append(
        f"- One GPU at the issue's estimate of {GPU_SAMPLES_PER_SECOND} Kinetics-Sounds samples/s (an H100 at 40% of "
        f"its bf16 peak, ~1.4 TFLOP per video step) needs {GPU_SAMPLES_PER_SECOND * NUM_CLIPS / per_worker:.0f} "
        "workers at this rate."
    )
    lines.append(
        "- No GPU was lent to this task, so no GPU clips/s exists in BENCHMARKS.md; on a GPU node run bench_model "
        "there and divide its train clips/s by the per-worker clips/s above for the workers a GPU needs."
    )
    lines += [
        "",
        f"### Shard readers: raw read rate ({READER_SAMPLES} synthetic videos, {reader_bytes / 1e6:.1f} MB, shards "
        "of 32, no decoding)",
        "",
        "| reader | samples/s | MB/s |",
        "|---|---|---|",
    ]
    for name, values in readers.items():
        rate = statistics.median(values)
        lines.append(f"| {name} | {rate:,.0f} | {rate * reader_bytes / READER_SAMPLES / 1e6:,.1f} |")
    lines += ["", "Writing: " + "; ".join(f"{name} {seconds:.2f} s" for name, seconds in writes.items()) + "."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", nargs="+", default=list(DEFAULT_VIDEOS), help="paths under ../shared/data/videos")
    parser.add_argument("--samples", type=int, default=12, help="samples per pass (the videos repeated)")
    parser.add_argument("--workers", default="0,1,2", help="DataLoader worker counts (default 0,1,2)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per variant (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print without updating BENCHMARKS.md")
    parser.add_argument("--recipes", action="store_true", help="add the per-recipe table (one worker, source files)")
    parser.add_argument("--recipes-only", action="store_true", help="only the per-recipe table; never writes")
    parser.add_argument("--baseline", type=Path, help="a checkout whose avbert gives the table's baseline columns")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # --recipes-only for --baseline
    parser.add_argument(
        "--reuse-freed-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="glibc keeps freed memory for reuse, as in avbert-train's DataLoader workers (forked from a trainer "
        "that turns it on; docs/performance.md); --no-reuse-freed-memory: glibc's defaults",
    )
    args = parser.parse_args(argv)
    args.workers = [int(n) for n in args.workers.split(",")]
    return args


def _add_passes(into: dict[str, dict], results: dict[str, dict]) -> None:
    for recipe, result in results.items():
        if recipe not in into:
            into[recipe] = result
            continue
        for kind in ("rates", "cpu_rates"):
            for name, values in result[kind].items():
                into[recipe][kind][name] += values


def recipes_section(args: argparse.Namespace) -> list[str]:
    """The per-recipe table; with ``--baseline``, the baseline's passes interleaved with ours, one per round."""
    results: dict[str, dict] = {}
    baseline: dict[str, dict] = {}
    for _ in range(args.rounds):
        _add_passes(results, recipe_rates(1))
        if args.baseline:
            _add_passes(baseline, baseline_recipe_rates(args.baseline, 1, args.reuse_freed_memory))
    return recipe_report(results, baseline or None, args.rounds, args.reuse_freed_memory)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.reuse_freed_memory:
        enable_freed_memory_reuse()  # forked DataLoader workers inherit it
    if args.json:
        print(json.dumps(recipe_rates(args.rounds)))
        return
    load_start = format_load()
    if args.recipes_only:
        lines = recipes_section(args)
        load_end = format_load()
        print(
            f"CPU: {describe_cpu()}, {available_cores()} cores available; load average {load_start} at the start, "
            f"{load_end} at the end (shared machine: compare within the table).\n"
        )
        print("\n".join(lines))
        return
    missing = [v for v in args.videos if not (VIDEOS_DIR / v).is_file()]
    if missing:
        sys.exit(f"videos not found under {VIDEOS_DIR}: {missing}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = [VIDEOS_DIR / args.videos[i % len(args.videos)] for i in range(args.samples)]
        write_shards(files, [0] * len(files), folder / "shards", shard_samples=max(1, args.samples // 6))
        _, transcoded = _transcoded_shards(
            "kinetics-sounds", "audio-visual", files, folder / "transcoded", shard_samples=max(1, args.samples // 6)
        )
        transcoded_shards = folder / "transcoded" / "shards" if transcoded else None
        rates = pipeline_rates(files, folder / "shards", transcoded_shards, args.workers, args.rounds)
        # After the pipeline: litdata's optimize switches multiprocessing to spawn for the rest of the process.
        readers, writes, reader_bytes = reader_rates(folder / "readers", args.rounds)
    recipe_lines = recipes_section(args) if args.recipes else []
    load_end = format_load()
    body = report(
        args,
        rates,
        readers,
        writes,
        reader_bytes,
        model_train_clips_per_second(REPO_ROOT / "BENCHMARKS.md"),
        len(files),
        (load_start, load_end),
    )
    if recipe_lines:
        body += "\n\n" + "\n".join(recipe_lines)
    publish(body, SECTION, REPO_ROOT / "BENCHMARKS.md", write=not args.no_write)


if __name__ == "__main__":
    main()
