"""Measure the training input pipeline (decode + process) in samples/s, folder vs shards, per DataLoader worker and for
N workers, and the shard readers' raw read rate; record it in BENCHMARKS.md.

Examples:
    .venv/bin/python benchmarks/bench_data.py                       # shared videos, 3 timed rounds
    .venv/bin/python benchmarks/bench_data.py --rounds 1 --workers 0,2 --no-write

A sample is one training input of the Kinetics-Sounds recipe: `AVBertProcessor` with 10 clips x 32 frames, random
short-side scale in [128, 160], random 112 crop and flip, and the 10 log-mel windows under the clips
(`MediaTransform(processor, "audio-visual", train=True)`, what `avbert-train` runs in its DataLoader workers).
The videos are the shared real videos with sound (`../shared/data/videos`), repeated to `--samples` samples.

- folder: `datasets.Dataset` of paths with `with_transform(MediaTransform)` (`load_media_dataset` rows), DataLoader.
- shards: the same files written by `write_shards` (WebDataset tar, bytes as they are) and read by
  `ShardedVideoDataset` (shuffle buffer 16), same transform, same DataLoader settings.
- workers 0 is the main process alone with 1 torch thread: the rate of ONE worker. N workers run N processes.
- readers: raw samples/s (bytes only, no decoding) of the shard libraries considered for `avbert.data.shards`
  over the same files, locally and from an HTTP server on 127.0.0.1; litdata and mosaicml-streaming are measured
  when installed (mosaicml-streaming 0.13.0 requires numpy<2.2 and cannot be installed beside numpy 2.4.6).

The ratio to the model: clips/s of one worker (samples/s x 10 clips) over the model's training clips/s read from
bench_model's tables in BENCHMARKS.md; on a GPU node that ratio is the number of workers a GPU needs. The script owns
the part of BENCHMARKS.md between `<!-- bench_data:start -->` and `<!-- bench_data:end -->`.
"""

import argparse
import functools
import http.server
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import webdataset as wds
from _report import available_cores, command_line, cpu_model, replace_section, utc_timestamp
from torch.utils.data import DataLoader

from avbert import AVBertFeatureExtractor, AVBertProcessor, AVBertVideoProcessor
from avbert.data.folders import AVBertDataCollator, MediaTransform
from avbert.data.shards import ShardedVideoDataset, load_manifests, write_shards
from avbert.data.synthetic import make_synthetic_av_dataset

STARTED = time.perf_counter()
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("AVBERT_SHARED_DIR", REPO_ROOT.parent / "shared"))
VIDEOS_DIR = SHARED_DIR / "data" / "videos"
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


def _drain(loader: DataLoader) -> int:
    return sum(batch["labels"].shape[0] for batch in loader)


def pipeline_rates(files: list[Path], shards: Path, workers: list[int], rounds: int) -> dict[tuple[str, int], list]:
    """samples/s of every (source, workers) variant, interleaved per round."""
    transform = MediaTransform(kinetics_sounds_processor(), "audio-visual", train=True)
    manifest = load_manifests(str(shards))
    variants: dict[tuple[str, int], Callable[[], DataLoader]] = {}
    for n in workers:
        common = {"batch_size": 1, "num_workers": n, "collate_fn": AVBertDataCollator()}
        if n:
            common["multiprocessing_context"] = "fork"  # Linux's default, what the Trainer's DataLoader uses
        variants["folder", n] = functools.partial(DataLoader, _PathRows(files, transform), shuffle=True, **common)
        variants["shards", n] = lambda n=n, common=common: DataLoader(
            ShardedVideoDataset(manifest, transform, batch_size=1, num_workers=n, shuffle_buffer=16), **common
        )
    rates: dict[tuple[str, int], list] = {key: [] for key in variants}
    for _ in range(rounds):
        for key, make in variants.items():
            loader = make()
            start = time.perf_counter()
            count = _drain(loader)
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
        f"- CPU: {cpu_model()}, {available_cores()} cores available; load average {load[0]} at the start, {load[1]} "
        "at the end. The machine was shared with other jobs: compare figures within this table, not across runs.",
        f"- Sample: one Kinetics-Sounds training input (10 clips x 32 frames, random scale/crop/flip, 112 x 112, and "
        f"10 log-mels) decoded + processed by `MediaTransform`; {num_files} samples per pass from "
        f"{len(args.videos)} real videos with sound.",
        f"- Method: {args.rounds} timed pass(es) per variant, variants interleaved; cells are the median samples/s "
        "(and the range). workers 0 = the main process alone, 1 torch thread: the rate of one DataLoader worker.",
        "",
        "| workers | folder samples/s | shards samples/s | shards / folder |",
        "|---|---|---|---|",
    ]
    for n in args.workers:
        folder, shards = rates["folder", n], rates["shards", n]
        lines.append(
            f"| {n} | {statistics.median(folder):.2f} ({min(folder):.2f}-{max(folder):.2f}) | "
            f"{statistics.median(shards):.2f} ({min(shards):.2f}-{max(shards):.2f}) | "
            f"{median['shards', n] / median['folder', n]:.2f}x |"
        )
    per_worker = median["shards", args.workers[0]] * NUM_CLIPS
    lines += ["", f"One worker (workers {args.workers[0]}, shards) delivers {per_worker:.1f} clips/s."]
    if model:
        for title, clips in model:
            lines.append(
                f"- Model training ({title}, bench_model): {clips:.2f} clips/s -> {per_worker / clips:.1f} clips "
                f"decoded per clip trained: one worker keeps {per_worker / clips:.1f} such models fed, "
                f"{max(1, round(clips / per_worker + 0.49))} worker(s) needed per model."
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
    args = parser.parse_args(argv)
    args.workers = [int(n) for n in args.workers.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    load_start = "/".join(f"{x:.1f}" for x in os.getloadavg())
    missing = [v for v in args.videos if not (VIDEOS_DIR / v).is_file()]
    if missing:
        sys.exit(f"videos not found under {VIDEOS_DIR}: {missing}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = [VIDEOS_DIR / args.videos[i % len(args.videos)] for i in range(args.samples)]
        write_shards(files, [0] * len(files), folder / "shards", shard_samples=max(1, args.samples // 6))
        rates = pipeline_rates(files, folder / "shards", args.workers, args.rounds)
        # After the pipeline: litdata's optimize switches multiprocessing to spawn for the rest of the process.
        readers, writes, reader_bytes = reader_rates(folder / "readers", args.rounds)
    load_end = "/".join(f"{x:.1f}" for x in os.getloadavg())
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
    print(body)
    if not args.no_write:
        replace_section(REPO_ROOT / "BENCHMARKS.md", SECTION, body)


if __name__ == "__main__":
    main()
