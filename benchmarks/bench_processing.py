"""Measure AVBERT preprocessing throughput (items/s) on real videos with audio and record it in BENCHMARKS.md.

Examples:
    .venv/bin/python benchmarks/bench_processing.py                    # default videos, 5 timed rounds
    .venv/bin/python benchmarks/bench_processing.py --repeats 1 --no-write
    .venv/bin/python benchmarks/bench_processing.py --videos a.mp4 b.mkv --efficient manual

One item is one audio-visual evaluation input of the Kinetics-Sounds recipe: 10 clips x 32 frames, one 128 x 128
spatial crop (`pixel_values` (1, 10, 3, 32, 128, 128)) and 10 log-mel windows aligned with the clips
(`input_features` (1, 10, 1, 80, 128)). The original's test set has 3 items per video, one per spatial crop, so every
timed round makes the 3 items of a video. Paths compared:

- baseline: what the original did per item: decode the WHOLE file (every video frame converted to RGB with PyAV, and
  all the audio), then sample the clips, resize and crop from memory; once per spatial crop.
- efficient: decode once per item, seeking per span and converting only the sampled frames, plus the audio. This is
  `AVBertProcessor` when `avbert.processing_avbert` can be imported, otherwise the same steps assembled here from
  the public pieces (`read_video`, `AudioTrack`, `AVBertVideoProcessor`, `AVBertFeatureExtractor`); the report names
  the one measured.
- efficient, all_views: one decode gives all 3 crops (`all_views=True`), i.e. 3 items per call.

Timing is single-process with 1 torch thread by default, which is what a DataLoader worker runs with, so items/s is
also the throughput of one worker. The script owns the part of BENCHMARKS.md between `<!-- bench_processing:start -->`
and `<!-- bench_processing:end -->`.
"""

import argparse
import importlib
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torchaudio
import transformers
from _report import (
    REPO_ROOT,
    STARTED,
    VIDEOS_DIR,
    available_cores,
    command_line,
    describe_cpu,
    format_load,
    library_versions,
    log,
    publish,
    run_python,
    utc_timestamp,
)

from avbert import AVBertFeatureExtractor, AVBertVideoProcessor
from avbert.data.synthetic import write_long_video
from avbert.media_decoding import AudioTrack, DecodedVideo, MediaInfo, probe, read_video
from avbert.video_processing_avbert import resize_frames, short_side_size

# The longest shared videos with audio (18.2 s and 14.0 s) and a typical 10 s Kinetics clip.
DEFAULT_VIDEOS = (
    "activitynet/v_GGSY1Qvo990.mp4",
    "activitynet/v_ZNVhz7ctTq0.mp4",
    "kinetics400/R6llTwEh07w.mp4",
)
SECTION = "bench_processing"
SPATIAL_CROPS = (0, 1, 2)  # left/top, center, right/bottom: the original's 3 test items per video
PROCESSOR_MODULE = "avbert.processing_avbert"


# ----------------------------------------------------------------------------------------------------------------
# The paths measured. Each takes a file and a spatial crop (None: all three) and returns one item's tensors.
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Item:
    """`pixel_values` (views, clips, 3, frames, H, W) and `input_features` (1 or views, clips, 1, mel, time)."""

    pixel_values: torch.Tensor
    input_features: torch.Tensor


ItemFunction = Callable[[Path, int | None], Item]


def crop_kwargs(crop: int | None) -> dict[str, Any]:
    return {"all_views": True} if crop is None else {"spatial_crop": crop}


def window_starts(
    video_processor: AVBertVideoProcessor,
    num_frames: int,
    fps: float,
    video_start: float,
    audio_start: float | None,
) -> np.ndarray:
    """Start of every clip's audio window in seconds from the first audio sample: the clip's timestamp."""
    starts = video_processor.clip_sampling().start_times(num_frames, fps, start_time=video_start) - (audio_start or 0.0)
    return np.maximum(starts, 0.0)


class ManualEfficientPath:
    """Decode once (sampled frames only, seeking per span, and the audio windows), then process frames and windows.

    Frames are resized to the processor's short side as they are decoded (what `AVBertVideoProcessor` does for files),
    so the sampled frames are never gathered at full resolution; the processor then only crops and normalizes.
    """

    def __init__(
        self, video_processor: AVBertVideoProcessor, feature_extractor: AVBertFeatureExtractor, why: str = ""
    ) -> None:
        self.video_processor = video_processor
        self.feature_extractor = feature_extractor
        self.short_side = int(video_processor.size["shortest_edge"])
        self.label = (
            f"the script's own assembly of the public pieces{f' ({why})' if why else ''}: one `read_video` call "
            "(indices from `AVBertVideoProcessor.clip_sampling().frame_indices`, short-side resize as the frame "
            "transform), then `AVBertVideoProcessor(frames, do_sample_frames=False)` and "
            "`AVBertFeatureExtractor.log_mels_of_windows(AudioTrack(path).read_windows, ...)` at the clip start times"
        )

    def _indices(self, info: Any) -> np.ndarray:
        return self.video_processor.clip_sampling().frame_indices(info.num_frames, info.fps).ravel()

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        height, width = short_side_size(frame.shape[0], frame.shape[1], self.short_side)
        return resize_frames(frame[None], height, width)[0]

    def decode(self, path: Path) -> DecodedVideo:
        return read_video(path, self._indices, frame_transform=self._resize)

    def __call__(self, path: Path, crop: int | None) -> Item:
        decoded = self.decode(path)
        video = decoded.info.video
        if video is None or decoded.info.audio is None:
            raise SystemExit(f"{path}: needs a video and an audio stream")
        pixel_values = self.video_processor(
            decoded.frames,
            do_sample_frames=False,
            video_metadata={"fps": video.fps},
            return_tensors="pt",
            **crop_kwargs(crop),
        )["pixel_values"]
        track = AudioTrack(path)
        starts = window_starts(self.video_processor, video.num_frames, video.fps, video.start_time, track.start_time)
        input_features = self.feature_extractor.log_mels_of_windows(track.read_windows, track.sample_rate, starts)
        return Item(pixel_values, input_features)


class ProcessorPath:
    """`AVBertProcessor(videos=path)`: the package's own single-decode path."""

    label = "`AVBertProcessor(videos=path)` from `avbert.processing_avbert` (decodes the file once per call)"

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, path: Path, crop: int | None) -> Item:
        outputs = self.processor(videos=str(path), return_tensors="pt", **crop_kwargs(crop))
        return Item(outputs["pixel_values"], outputs["input_features"])


def efficient_path(
    choice: str, video_processor: AVBertVideoProcessor, feature_extractor: AVBertFeatureExtractor
) -> ManualEfficientPath | ProcessorPath:
    """`AVBertProcessor` when it can be imported (or is asked for), else the script's own assembly of the pieces."""
    if choice == "manual":
        return ManualEfficientPath(video_processor, feature_extractor, "chosen with --efficient manual")
    if importlib.util.find_spec(PROCESSOR_MODULE) is None:
        if choice == "processor":
            raise SystemExit(f"--efficient processor: {PROCESSOR_MODULE} does not exist.")
        return ManualEfficientPath(video_processor, feature_extractor, f"`{PROCESSOR_MODULE}` does not exist yet")
    try:
        processor_class = importlib.import_module(PROCESSOR_MODULE).AVBertProcessor
    except Exception as error:  # a module being written may not import yet; auto falls back and says so
        if choice == "processor":
            raise
        why = f"importing `{PROCESSOR_MODULE}.AVBertProcessor` failed: {type(error).__name__}: {error}"
        log(f"WARNING: {why}; measuring the script's own efficient path")
        return ManualEfficientPath(video_processor, feature_extractor, why)
    return ProcessorPath(processor_class(feature_extractor=feature_extractor, video_processor=video_processor))


@dataclass
class WholeFile:
    """Every frame of the first video stream (RGB uint8) and all of the first audio stream (float32 channels x n)."""

    frames: np.ndarray
    fps: float
    video_start: float
    waveform: np.ndarray
    sample_rate: int
    audio_start: float


def _audio_samples(frame: av.AudioFrame) -> np.ndarray:
    """(channels, samples) float32 from a planar or packed, float or integer audio frame."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:
        data = data.reshape(-1, frame.layout.nb_channels).T
    if np.issubdtype(data.dtype, np.integer):
        return (data / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    return data.astype(np.float32, copy=False)


def decode_whole_file(path: Path) -> WholeFile:
    """The original's loading (torchvision `read_video`): one pass over the file decoding every packet."""
    frames: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    video_start = audio_start = None
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        for packet in container.demux(video, audio):
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    video_start = frame.time if video_start is None else video_start
                    frames.append(frame.to_ndarray(format="rgb24"))
                else:
                    audio_start = frame.time if audio_start is None else audio_start
                    chunks.append(_audio_samples(frame))
        return WholeFile(
            frames=np.stack(frames),
            fps=float(video.average_rate or 0.0),
            video_start=float(video_start or 0.0),
            waveform=np.concatenate(chunks, axis=1),
            sample_rate=int(audio.codec_context.sample_rate),
            audio_start=float(audio_start or 0.0),
        )


class BaselinePath:
    """Per item: decode the whole file, then sample, resize and crop the clips from the frames in memory."""

    label = (
        "as in the original, per item (spatial crop) decode the whole file with PyAV (every frame to RGB, all the "
        "audio), then `AVBertVideoProcessor(all frames)` samples, resizes and crops in memory and "
        "`AVBertFeatureExtractor` cuts the windows. The windows sit at the clips' timestamps, as in the efficient "
        "paths (the original placed them by fraction of the duration, at the same cost), so the outputs can be compared"
    )

    def __init__(self, video_processor: AVBertVideoProcessor, feature_extractor: AVBertFeatureExtractor) -> None:
        self.video_processor = video_processor
        self.feature_extractor = feature_extractor

    def __call__(self, path: Path, crop: int | None) -> Item:
        whole = decode_whole_file(path)
        pixel_values = self.video_processor(
            whole.frames, video_metadata={"fps": whole.fps}, return_tensors="pt", **crop_kwargs(crop)
        )["pixel_values"]
        # The original placed the windows by fraction of the audio's duration; by the clips' timestamps (as the
        # efficient paths do) the cost is the same and the outputs can be compared.
        starts = window_starts(self.video_processor, len(whole.frames), whole.fps, whole.video_start, whole.audio_start)
        input_features = self.feature_extractor(
            whole.waveform, sampling_rate=whole.sample_rate, clip_starts=starts, return_tensors="pt"
        )["input_features"]
        return Item(pixel_values, input_features)


# ----------------------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pipeline:
    """One path: how to make the 3 items of a video in one round (3 single-crop calls or one all-views call)."""

    key: str
    label: str
    function: ItemFunction
    all_views: bool

    def round(self, path: Path) -> list[Item]:
        if self.all_views:
            return [self.function(path, None)]
        return [self.function(path, crop) for crop in SPATIAL_CROPS]


@dataclass
class VideoFacts:
    path: Path
    name: str
    info: MediaInfo
    sampled_unique: int
    decoded_by_seeking: int


@dataclass
class Timing:
    """Milliseconds per item of every timed round."""

    ms_per_item: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.ms_per_item)

    @property
    def min_ms(self) -> float:
        return min(self.ms_per_item)

    @property
    def items_per_s(self) -> float:
        return 1000.0 / self.median_ms


def describe_video(path: Path, manual: ManualEfficientPath) -> VideoFacts:
    info = probe(path)
    if info.video is None or info.audio is None:
        raise SystemExit(f"{path}: a video with an audio stream is needed (video: {info.video}, audio: {info.audio})")
    decoded = manual.decode(path)
    resolved, root = path.resolve(), VIDEOS_DIR.resolve()
    return VideoFacts(
        path=path,
        name=str(resolved.relative_to(root) if resolved.is_relative_to(root) else path),
        info=decoded.info,
        sampled_unique=len(np.unique(decoded.indices)),
        decoded_by_seeking=decoded.frames_decoded,
    )


def compare_outputs(path: Path, pipelines: list[Pipeline], expected_shapes: tuple[tuple[int, ...], ...]) -> str:
    """Check shapes and compare every path's tensors with the baseline's (untimed); a one-line summary."""
    baseline = pipelines[0].round(path)
    for item in baseline:
        shapes = (tuple(item.pixel_values.shape), tuple(item.input_features.shape))
        if shapes != expected_shapes:
            raise SystemExit(f"{path}: the baseline gives shapes {shapes}, expected {expected_shapes}")
    baseline_pixels = torch.cat([item.pixel_values for item in baseline])
    baseline_features = baseline[0].input_features
    notes = []
    for other in pipelines[1:]:
        items = other.round(path)
        pixels = torch.cat([item.pixel_values for item in items])
        features = items[0].input_features
        if pixels.shape != baseline_pixels.shape or features.shape[1:] != baseline_features.shape[1:]:
            raise SystemExit(
                f"{path}: {other.key} gives pixel_values {tuple(pixels.shape)} and input_features "
                f"{tuple(features.shape)}; the baseline's 3 items give {tuple(baseline_pixels.shape)} and "
                f"{tuple(baseline_features.shape)}"
            )
        pixel_diff = (pixels - baseline_pixels).abs().max().item()
        feature_diff = (features - baseline_features).abs().max().item()
        same = "identical" if pixel_diff == 0 and feature_diff == 0 else "DIFFERENT"
        notes.append(
            f"{other.key}: {same} (max abs diff pixel_values {pixel_diff:.3g}, input_features {feature_diff:.3g})"
        )
    return "; ".join(notes)


def measure(videos: list[VideoFacts], pipelines: list[Pipeline], repeats: int) -> dict[tuple[str, str], Timing]:
    """Per video: 1 warmup round per path, then `repeats` rounds with the paths interleaved, so that load changes on a
    shared machine hit every path alike. A round makes the 3 items of the video; its time / 3 is one sample."""
    timings: dict[tuple[str, str], Timing] = {}
    for video in videos:
        for pipeline in pipelines:
            pipeline.round(video.path)
            timings[video.name, pipeline.key] = Timing([])
        for repeat in range(repeats):
            for pipeline in pipelines:
                start = time.perf_counter()
                items = pipeline.round(video.path)
                elapsed_ms = (time.perf_counter() - start) * 1000
                del items
                timings[video.name, pipeline.key].ms_per_item.append(elapsed_ms / len(SPATIAL_CROPS))
            summary = ", ".join(f"{p.key} {timings[video.name, p.key].ms_per_item[-1]:.0f}" for p in pipelines)
            log(f"{video.name} round {repeat + 1}/{repeats}: ms/item {summary}")
    return timings


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def format_table(videos: list[VideoFacts], pipelines: list[Pipeline], timings: dict[tuple[str, str], Timing]) -> str:
    baseline = pipelines[0].key
    header = ["video", "length, size, fps", "frames: file / sampled / decoded by seeking"]
    for pipeline in pipelines:
        header += [f"{pipeline.key} ms/item", f"{pipeline.key} items/s"]
        if pipeline.key != baseline:
            header.append("speedup")
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    means = {
        pipeline.key: statistics.fmean(timings[v.name, pipeline.key].median_ms for v in videos)
        for pipeline in pipelines
    }
    for video in videos:
        info = video.info.video
        assert info is not None
        cells = [
            f"`{video.name}`",
            f"{info.duration:.1f} s, {info.width}x{info.height}, {info.fps:.2f}",
            f"{info.num_frames} / {video.sampled_unique} / {video.decoded_by_seeking}",
        ]
        for pipeline in pipelines:
            timing = timings[video.name, pipeline.key]
            cells += [f"{timing.median_ms:,.0f} (min {timing.min_ms:,.0f})", f"{timing.items_per_s:.2f}"]
            if pipeline.key != baseline:
                cells.append(f"{timings[video.name, baseline].median_ms / timing.median_ms:.2f}x")
        rows.append("| " + " | ".join(cells) + " |")
    cells = ["**mean**", "", ""]
    for pipeline in pipelines:
        cells += [f"**{means[pipeline.key]:,.0f}**", f"**{1000 / means[pipeline.key]:.2f}**"]
        if pipeline.key != baseline:
            cells.append(f"**{means[baseline] / means[pipeline.key]:.2f}x**")
    rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def format_worker_lines(
    pipelines: list[Pipeline], videos: list[VideoFacts], timings: dict[tuple[str, str], Timing], threads: int
) -> list[str]:
    per_worker = []
    for pipeline in pipelines:
        mean_ms = statistics.fmean(timings[v.name, pipeline.key].median_ms for v in videos)
        per_worker.append(f"{pipeline.key} {1000 / mean_ms:.2f} items/s")
    thread_note = (
        "measured with 1 torch thread, as DataLoader workers run"
        if threads == 1
        else f"measured with {threads} torch threads; a DataLoader worker runs with 1, so this overstates one worker"
    )
    return [
        f"- Per DataLoader worker (mean over the videos; {thread_note}): {'; '.join(per_worker)}.",
        "- Throughput scales with `num_workers`: each worker decodes and processes its own items in its own process, "
        "so N workers give about N x these figures while free CPU cores remain (this machine has "
        f"{available_cores()} available to this process) and the storage keeps up.",
    ]


@dataclass
class RunInfo:
    args: argparse.Namespace
    threads: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    checks: dict[str, str]
    wall_s: float


def format_report(
    info: RunInfo, videos: list[VideoFacts], pipelines: list[Pipeline], timings: dict[tuple[str, str], Timing]
) -> str:
    args = info.args
    lines = [
        "## Preprocessing throughput (`benchmarks/bench_processing.py`)",
        "",
        f"- Command: `{command_line()}` (run time {info.wall_s:.0f} s, imports excluded)",
        f"- Date: {utc_timestamp()}; {library_versions(torch, torchaudio, transformers)}, PyAV {av.__version__} "
        f"(FFmpeg {av.ffmpeg_version_info}), numpy {np.__version__}",
        f"- CPU: {describe_cpu()}, {os.cpu_count()} cores ({available_cores()} available to this process), "
        f"torch threads {info.threads}; load average (1/5/15 min) {format_load(info.load_before)} at the start, "
        f"{format_load(info.load_after)} at the end",
        "- Item: one audio-visual evaluation input: 10 clips x 32 frames, one 128 x 128 spatial crop "
        "(`pixel_values` (1, 10, 3, 32, 128, 128)) and 10 log-mel windows at the clips' timestamps (`input_features` "
        "(1, 10, 1, 80, 128)); 3 items per video, one per spatial crop, as in the original's test set.",
        "- Paths:",
    ]
    lines += [f"  - **{pipeline.key}**: {pipeline.label}" for pipeline in pipelines]
    lines += [
        f"- Method: per video, 1 warmup round per path, then {args.repeats} timed round(s) with the paths interleaved; "
        "a round makes the 3 items of the video (3 calls, or 1 with all_views) and ms/item = round time / 3. "
        "Cells give the median over the rounds (and the fastest round); items/s = 1000 / median ms; speedup = "
        "baseline median / path median. The mean row averages the per-video medians (a dataset cycling through "
        "these files); its items/s = 1000 / mean ms.",
        "- Frames: in the file / distinct sampled indices (frames converted to RGB by the efficient paths; the "
        "baseline converts all) / frames the seeking reader decodes. Where 10 clips of 2.13 s cover most of the "
        "video (10-20 s files) seeking skips few frames; the saving is then mostly the RGB conversion and copying of "
        "frames no clip uses, and it grows with the video's length.",
        "- Outputs (checked once per video, untimed): " + " / ".join(f"`{n}`: {c}" for n, c in info.checks.items()),
    ]
    lines += format_worker_lines(pipelines, videos, timings, info.threads)
    if args.note:
        lines.append(f"- Note: {args.note}")
    lines += ["", format_table(videos, pipelines, timings)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--videos",
        type=Path,
        nargs="+",
        default=None,
        help=f"video files with audio (default: {', '.join(DEFAULT_VIDEOS)} under {VIDEOS_DIR})",
    )
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed rounds per video and path (default 5)")
    parser.add_argument(
        "--efficient",
        choices=("auto", "processor", "manual"),
        default="auto",
        help="efficient path: AVBertProcessor if importable (auto, the default), AVBertProcessor or fail (processor), "
        "or the script's own assembly of the public pieces (manual)",
    )
    parser.add_argument("--no-all-views", action="store_true", help="skip the all_views=True path")
    parser.add_argument(
        "--long-video-minutes", type=int, default=10, help="length of the generated long video (0: skip; default 10)"
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1, as in a worker)")
    parser.add_argument("--note", default=None, help="a remark to add to the report (e.g. about machine load)")
    parser.add_argument("--no-write", action="store_true", help="print the results without updating BENCHMARKS.md")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "BENCHMARKS.md", help="file to update (default: repo BENCHMARKS.md)"
    )
    return parser.parse_args(argv)


def resolve_videos(videos: list[Path] | None) -> list[Path]:
    paths = videos if videos is not None else [VIDEOS_DIR / name for name in DEFAULT_VIDEOS]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SystemExit(f"video files not found: {', '.join(missing)} (set AVBERT_SHARED_DIR or pass --videos)")
    return paths


# The figures this script recorded before the processing redesign, for comparison (ratios, not absolute rates).
BEFORE_ISSUE_10 = (
    "- Before issue 10 (2026-11-25 run of this script, the same files, a quieter machine: load 1.4): baseline 1.54, "
    "efficient 2.39, all_views 4.82 items/s per worker, i.e. 1.55x and 3.13x the baseline. Absolute items/s are not "
    "comparable across runs on this shared machine; the ratios to the baseline, measured in the same run, are.\n"
    "- Before the BaseVideoProcessor redesign (2026-12-02 01:29 run, the same files and command, load 8-10): baseline "
    "0.67, efficient 1.21, all_views 2.46 items/s per worker, i.e. 1.81x and 3.66x the baseline; long video 3.1 s, "
    "1174 MiB peak (232 MiB for the call)."
)

LONG_VIDEO_CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from _report import proc_status_mib
from avbert import AVBertProcessor
processor = AVBertProcessor()
before = proc_status_mib("VmRSS")
start = time.perf_counter()
out = processor(videos=sys.argv[1], return_tensors="pt")
seconds = time.perf_counter() - start
shapes = [list(out[key].shape) for key in ("pixel_values", "input_features")]
print(json.dumps([seconds, before, proc_status_mib("VmHWM"), *shapes]))
"""


def long_video_report(minutes: int) -> str:
    """One `AVBertProcessor` call (10 clips, frames and sound) on a generated video of `minutes` minutes, in a fresh
    process so that its peak resident memory (VmHWM) is the call's."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long.mp4"
        log(f"writing a {minutes}-minute video")
        write_long_video(path, 60 * minutes)
        size = path.stat().st_size
        log("processing it")
        seconds, before, peak, pixels, features = run_python(LONG_VIDEO_CHILD, str(path))
    return (
        f"- Long video: one `AVBertProcessor(videos=path)` call (10 clips, frames and the sound under them) on a "
        f"generated {minutes}-minute 64x48 H.264 30 fps video with 48 kHz AAC sound ({size / 2**20:.1f} MiB): "
        f"**{seconds:.1f} s**, peak resident memory **{peak:.0f} MiB** ({before:.0f} MiB after importing torch and "
        f"avbert, so {peak - before:.0f} MiB for the call); outputs {tuple(pixels)} and {tuple(features)}. Before "
        "this change the whole sound track was decoded and resampled: a 2-hour such video peaked at about 7 GB "
        "(issue 10), and tests/test_processing_avbert.py::test_memory_follows_the_clips_not_the_file "
        "measures 46 MiB of traced allocations for 2 minutes of sound with the old path against under 8 MiB now."
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    video_paths = resolve_videos(args.videos)
    load_before = os.getloadavg()

    video_processor, feature_extractor = AVBertVideoProcessor(), AVBertFeatureExtractor()
    manual = ManualEfficientPath(video_processor, feature_extractor)
    efficient = efficient_path(args.efficient, video_processor, feature_extractor)
    efficient_label = efficient.label
    pipelines = [
        Pipeline("baseline", BaselinePath.label, BaselinePath(video_processor, feature_extractor), False),
        Pipeline("efficient", efficient_label, efficient, False),
    ]
    if not args.no_all_views:
        pipelines.append(
            Pipeline("all_views", "as efficient, with `all_views=True`: one call, 3 items", efficient, True)
        )
    log(f"Efficient path: {efficient_label}")

    crop = int(video_processor.crop_size["height"])
    expected_shapes = (
        (1, video_processor.num_clips, 3, video_processor.num_frames, crop, crop),
        (1, feature_extractor.num_clips, 1, feature_extractor.feature_size, feature_extractor.num_time_frames),
    )
    videos, checks = [], {}
    for path in video_paths:
        facts = describe_video(path, manual)
        checks[facts.name] = compare_outputs(path, pipelines, expected_shapes)
        log(f"{facts.name}: {checks[facts.name]}")
        videos.append(facts)

    timings = measure(videos, pipelines, args.repeats)
    info = RunInfo(args, torch.get_num_threads(), load_before, os.getloadavg(), checks, time.perf_counter() - STARTED)
    report = format_report(info, videos, pipelines, timings)
    report += "\n\n" + BEFORE_ISSUE_10
    if args.long_video_minutes:
        report += "\n" + long_video_report(args.long_video_minutes)
    publish(report, SECTION, args.output, write=not args.no_write)


if __name__ == "__main__":
    main()
