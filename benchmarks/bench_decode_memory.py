"""Peak memory of one `AVBertVideoProcessor` call on a generated high-resolution file, and record it in BENCHMARKS.md.

Examples:
    .venv/bin/python benchmarks/bench_decode_memory.py                 # 1920x1080, 10 s, eval and training calls
    .venv/bin/python benchmarks/bench_decode_memory.py --width 1280 --height 720 --no-write

Each call runs in a fresh process, so that its peak resident memory (VmHWM) over the RSS after the imports is the
call's. Two ways to the same `pixel_values` (checked equal, by hash):

- resized while decoded: `processor(path)`; the decoder resizes each kept frame to the output size (the evaluation
  size, or the training draw's scale) as it converts it;
- decoded at source size: the same call with `_decode_files` replaced by the plain `fetch_videos` (no output size for
  the decoder, so `_preprocess` resizes the source-size frames): what a call on a file did before frames were resized
  while decoded (the processing redesign of issue 10 until this change).

The script owns the part of BENCHMARKS.md between `<!-- bench_decode_memory:start -->` and its end marker.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from _report import (
    REPO_ROOT,
    available_cores,
    command_line,
    describe_cpu,
    format_load,
    publish,
    run_python,
    utc_timestamp,
)

SECTION = "bench_decode_memory"

CHILD = """
import hashlib, json, sys, time
import torch
torch.set_num_threads(1)
from _report import proc_status_mib
from avbert import AVBertVideoProcessor
path, way, mode = sys.argv[1:]
processor = AVBertVideoProcessor(do_train_augmentation=mode == "training")
before = proc_status_mib("VmRSS")
start = time.perf_counter()
if way == "decoded at source size":  # the hook as it was: no output size for the decoder
    processor._decode_files = processor.fetch_videos
pixel_values = processor(path, seed=0)["pixel_values"]
seconds = time.perf_counter() - start
digest = hashlib.sha256(pixel_values.numpy().tobytes()).hexdigest()[:16]
print(json.dumps([seconds, before, proc_status_mib("VmHWM"), list(pixel_values.shape), digest]))
"""
WAYS = ("decoded at source size", "resized while decoded")


def write_video(path: Path, width: int, height: int, seconds: int, fps: int = 30) -> None:
    """H.264 frames with detail in both directions (ramps and a moving band), so that every frame differs."""
    columns = np.linspace(0, 255, width).astype(np.int64)[None, :]
    rows = np.linspace(0, 255, height).astype(np.int64)[:, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast"}
        for index in range(seconds * fps):
            frame = np.empty((height, width, 3), np.uint8)
            frame[..., 0] = (columns + 4 * index) % 256
            frame[..., 1] = rows
            frame[..., 2] = (columns // 2 + rows // 2 + 8 * index) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def measure(path: Path, way: str, mode: str) -> dict:
    seconds, before, peak, shape, digest = run_python(CHILD, str(path), way, mode)
    return {"seconds": seconds, "before": before, "peak": peak, "shape": tuple(shape), "digest": digest}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--note", default=None, help="a remark to add to the report (e.g. about machine load)")
    parser.add_argument("--no-write", action="store_true", help="print the results without updating BENCHMARKS.md")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    started, load = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "high_resolution.mp4"
        write_video(path, args.width, args.height, args.seconds)
        size = path.stat().st_size
        results = {(mode, way): measure(path, way, mode) for mode in ("evaluation", "training") for way in WAYS}
    lines = [
        "## Decoding memory of a high-resolution file (`benchmarks/bench_decode_memory.py`)",
        "",
        f"- Command: `{command_line()}` (run time {time.perf_counter() - started:.0f} s)",
        f"- Date: {utc_timestamp()}; CPU: {describe_cpu()}, {available_cores()} cores available, torch threads 1; "
        f"load average (1/5/15 min) {format_load(load)} at the start",
        f"- File: generated {args.width}x{args.height} H.264, {args.seconds} s at 30 fps ({size / 2**20:.1f} MiB); "
        "one `AVBertVideoProcessor()` call (10 clips x 32 frames, the default settings; training: "
        "`do_train_augmentation=True, seed=0`), each in a fresh process.",
        "- Peak = the process's VmHWM; the call's share = peak - RSS after the imports (glibc keeps freed heap, so "
        "this is an upper bound of what the call held at once). Times are one run each on a shared machine.",
    ]
    if args.note:
        lines.append(f"- Note: {args.note}")
    lines += ["", "| call | way | peak MiB | call's share MiB | s | pixel_values | equal |", "|---" * 7 + "|"]
    for (mode, way), result in results.items():
        equal = result["digest"] == results[(mode, WAYS[0])]["digest"]
        lines.append(
            f"| {mode} | {way} | {result['peak']:.0f} | {result['peak'] - result['before']:.0f} | "
            f"{result['seconds']:.1f} | {result['shape']} | {'yes' if equal else 'NO'} |"
        )
    publish("\n".join(lines), SECTION, args.output, write=not args.no_write)


if __name__ == "__main__":
    main()
