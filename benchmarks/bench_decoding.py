"""Choose the decoding backend by measurement: torchcodec (transformers' and `datasets`' decoder) against our PyAV.

Examples:
    .venv/bin/python benchmarks/bench_decoding.py                  # every shared video, 3 timed rounds, fuzz cases
    .venv/bin/python benchmarks/bench_decoding.py --repeats 1 --no-fuzz --no-write

Per shared video (../shared/data/videos), the frames one AVBERT evaluation item needs (the Kinetics-Sounds recipe:
10 clips x 32 frames, sampled by `AVBertVideoProcessor.clip_sampling().frame_indices`) and the sound under its 10 clips:
- PyAV: `avbert.media_decoding.read_video` (one demux pass for the frame table, then seeking only where a
  keyframe lies ahead, only sampled frames converted to RGB) and `AudioTrack.read_windows` (one decoding pass that
  keeps the windows);
- torchcodec: `VideoDecoder(path, seek_mode="exact").get_frames_at(indices)` and
  `AudioDecoder(path).get_samples_played_in_range(start, stop)` per window.
Times are medians of interleaved rounds (1 torch thread, as in a DataLoader worker), frames and samples are compared.
Then the reader's own choice, seeking or not: the same frames with `media_decoding._FRAMES_A_SEEK_MUST_SKIP` set to
0 (seek whenever a keyframe lies ahead), to its value (seek only past that many frames) and to infinity (one sequential
pass keeping the wanted frames), on the three longest shared videos and a generated 5-minute one.
Then the fuzz suite's damaged files (tests/test_fuzz_media.py's seeds and mutations) go through both, torchcodec in a
child process so that a crash is counted rather than ending the run. The script owns the part of BENCHMARKS.md
between `<!-- bench_decoding:start -->` and `<!-- bench_decoding:end -->`.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from _report import REPO_ROOT, SHARED_DIR, VIDEOS_DIR, command_line, describe_cpu, publish, utc_timestamp

import avbert.media_decoding as media_decoding
from avbert import AVBertVideoProcessor
from avbert.media_decoding import AudioTrack, MediaDecodeError, read_audio, read_video

SECTION = "bench_decoding"
CLIP_SECONDS = 32 * 2 / 30


def pyav_frames(path: Path, processor: AVBertVideoProcessor) -> tuple[np.ndarray, int, int, float, bool]:
    def choose(info):
        return np.unique(processor.clip_sampling().frame_indices(info.num_frames, info.fps))

    decoded = read_video(path, choose)
    has_audio = decoded.info.audio is not None
    return decoded.frames, decoded.info.video.num_frames, decoded.frames_decoded, decoded.info.video.fps, has_audio


def pyav_audio(path: Path, starts: np.ndarray) -> list[np.ndarray]:
    track = AudioTrack(path)
    rate = track.sample_rate
    return track.read_windows([(round(t * rate), round(t * rate) + round(CLIP_SECONDS * rate)) for t in starts])


def torchcodec_frames(path: Path, processor: AVBertVideoProcessor) -> np.ndarray:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path), seek_mode="exact", dimension_order="NHWC")
    indices = np.unique(
        processor.clip_sampling().frame_indices(decoder.metadata.num_frames, decoder.metadata.average_fps)
    )
    return decoder.get_frames_at(indices.tolist()).data.numpy()


def torchcodec_audio(path: Path, starts: np.ndarray) -> list[np.ndarray]:
    from torchcodec.decoders import AudioDecoder

    audio = AudioDecoder(str(path))
    return [audio.get_samples_played_in_range(t, t + CLIP_SECONDS).data.numpy() for t in starts.tolist()]


def median_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def compare_video(path: Path, processor: AVBertVideoProcessor, repeats: int) -> dict:
    ours, total, decoded, fps, has_audio = pyav_frames(path, processor)
    row = {"video": str(path.relative_to(VIDEOS_DIR)), "sampled": len(ours), "decoded_by_pyav": decoded}
    try:
        theirs = torchcodec_frames(path, processor)
    except Exception as error:  # torchcodec's own failure on a real file: the row says so
        theirs, row["frames"] = None, f"torchcodec fails: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
    if theirs is not None and ours.shape == theirs.shape:
        equal = np.mean(np.all(ours == theirs, axis=(1, 2, 3)))
        row["frames"] = f"{equal:.0%} equal, max diff {np.abs(ours.astype(int) - theirs).max()}"
    elif theirs is not None:
        row["frames"] = f"shapes differ: {ours.shape} vs {theirs.shape}"
    row["pyav_video_ms"] = median_ms(lambda: pyav_frames(path, processor), repeats)
    row["torchcodec_video_ms"] = (
        median_ms(lambda: torchcodec_frames(path, processor), repeats) if theirs is not None else None
    )
    row["audio"], row["pyav_audio_ms"], row["torchcodec_audio_ms"] = "no audio", None, None
    if has_audio:
        starts = processor.clip_sampling().start_times(total, fps)
        mine, other = pyav_audio(path, starts), torchcodec_audio(path, starts)
        shortest = [min(a.shape[1], b.shape[1]) for a, b in zip(mine, other, strict=True)]
        diff = max(np.abs(a[:, :n] - b[:, :n]).max() for a, b, n in zip(mine, other, shortest, strict=True))
        row["audio"] = f"max diff {diff:.2g}"
        row["pyav_audio_ms"] = median_ms(lambda: pyav_audio(path, starts), repeats)
        row["torchcodec_audio_ms"] = median_ms(lambda: torchcodec_audio(path, starts), repeats)
    return row


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


# ---------------------------------------------------------------------------------------------------------------------
# Fuzzing: the fuzz suite's damaged files through both backends


CHILD = r"""
import json, sys
import numpy as np
from torchcodec.decoders import AudioDecoder, VideoDecoder
for line in sys.stdin:
    path = line.strip()
    try:
        decoder = VideoDecoder(path, seek_mode="exact")
        count = decoder.metadata.num_frames or 1
        frames = decoder.get_frames_at([i for i in (0, 5, 10) if i < count]).data
        outcome = "result"
        try:
            AudioDecoder(path).get_all_samples()
        except Exception:
            pass
    except Exception as error:
        outcome = "error: " + type(error).__name__
    print(json.dumps({"path": path, "outcome": outcome}), flush=True)
"""


def fuzz_cases(folder: Path) -> list[Path]:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import test_fuzz_media as fuzz

    cases = []
    for seed, relative in fuzz.SHARED_SEEDS.items():
        source = SHARED_DIR / "data" / relative
        data = source.read_bytes()
        for mutation in fuzz.MUTATIONS:
            case = folder / f"{seed}-{mutation}{source.suffix}"
            case.write_bytes(fuzz._mutate(data, source.suffix, mutation, fuzz._case_rng(seed, mutation)))
            cases.append(case)
    return cases


def fuzz_torchcodec(cases: list[Path]) -> Counter:
    """Outcomes per case; a child that dies (a crash in C code) is restarted after the case it died on."""
    outcomes: Counter = Counter()
    remaining = list(cases)
    while remaining:
        child = subprocess.run(
            [sys.executable, "-c", CHILD],
            input="\n".join(map(str, remaining)) + "\n",
            capture_output=True,
            text=True,
            timeout=600,
        )
        done = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
        outcomes.update(item["outcome"] for item in done)
        remaining = remaining[len(done) :]
        if remaining:
            outcomes[f"crash (signal {-child.returncode})"] += 1
            remaining = remaining[1:]
    return outcomes


def fuzz_pyav(cases: list[Path], processor: AVBertVideoProcessor) -> Counter:
    outcomes: Counter = Counter()
    for case in cases:
        try:
            if read_video(case, [0, 5, 10]).info.audio is not None:
                read_audio(case)
            outcomes["result"] += 1
        except MediaDecodeError:
            outcomes["MediaDecodeError"] += 1
        except Exception as error:  # the fuzz test forbids these; count them if they ever appear
            outcomes[f"error: {type(error).__name__}"] += 1
    return outcomes


READER_VIDEOS = ("activitynet/v_GGSY1Qvo990.mp4", "activitynet/v_ZNVhz7ctTq0.mp4", "kinetics400/R6llTwEh07w.mp4")


def write_five_minute_video(path: Path) -> Path:
    """9000 frames of 340x256 at 30 fps, libx264's default keyframe interval (250): a long video seeking can skip."""
    import av

    ramp = np.arange(340, dtype=np.uint8)[None, :, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 340, 256, "yuv420p"
        for index in range(9000):
            image = np.broadcast_to(ramp + np.uint8(index % 256), (256, 340, 3)).copy()
            image[(index * 3) % 256, :, :] = 255  # a moving line: every frame differs
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def reader_rows(paths: list[Path], processor: AVBertVideoProcessor, repeats: int) -> list[str]:
    """ms per item of the seeking reader under three seek thresholds, interleaved; the frames must be identical."""
    shipped = media_decoding._FRAMES_A_SEEK_MUST_SKIP
    thresholds = {"seek at every keyframe ahead": 0, f"seek past {shipped} frames (shipped)": shipped}
    thresholds["one sequential pass"] = 10**12
    lines = [
        "| video | frames | sampled | " + " | ".join(f"{name}: decoded / ms" for name in thresholds) + " |",
        "|---|---|---|" + "---|" * len(thresholds),
    ]
    try:
        for path in paths:
            times: dict[str, list[float]] = {name: [] for name in thresholds}
            decoded: dict[str, int] = {}
            reference = None
            for round_index in range(repeats + 1):  # the first round warms up and checks the frames
                for name, threshold in thresholds.items():
                    media_decoding._FRAMES_A_SEEK_MUST_SKIP = threshold
                    start = time.perf_counter()
                    frames, total, decoded[name], _, _ = pyav_frames(path, processor)
                    if round_index:
                        times[name].append((time.perf_counter() - start) * 1000)
                    elif reference is None:
                        reference = frames
                    elif not np.array_equal(frames, reference):
                        raise SystemExit(f"{path}: {name} gives other frames")
            cells = [f"{decoded[name]} / {statistics.median(times[name]):.0f}" for name in thresholds]
            name = (
                path.relative_to(VIDEOS_DIR) if path.is_relative_to(VIDEOS_DIR) else "generated 5 min, 340x256, 30 fps"
            )
            lines.append(f"| `{name}` | {total} | {len(reference)} | " + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr, flush=True)
    finally:
        media_decoding._FRAMES_A_SEEK_MUST_SKIP = shipped
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-fuzz", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import torchcodec

    processor = AVBertVideoProcessor()
    started = time.perf_counter()
    videos = sorted(p for p in VIDEOS_DIR.rglob("*") if p.suffix in (".mp4", ".avi", ".mkv"))
    rows = []
    for path in videos:
        rows.append(compare_video(path, processor, args.repeats))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lines = [
        "## Decoding backend: torchcodec against our PyAV reader (`benchmarks/bench_decoding.py`)",
        "",
        f"- Command: `{command_line()}` (run time {time.perf_counter() - started:.0f} s)",
        f"- Date: {utc_timestamp()}; {describe_cpu()}, shared with other jobs (ratios within this run only); torch "
        f"threads 1; torchcodec {torchcodec.__version__}",
        "- One item: the unique frames of 10 clips x 32 frames (the Kinetics-Sounds recipe) and the sound under its "
        "10 clips (2.13 s windows). ms: median of interleaved rounds; torchcodec's includes building its decoders "
        "(exact seek mode scans the file, as our frame table does).",
        "",
        "| video | sampled frames | PyAV decodes | frames: PyAV ms | torchcodec ms | frames compared | sound: PyAV ms "
        "| torchcodec ms | sound compared |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| `{row['video']}` | {row['sampled']} | {row['decoded_by_pyav']} | {cell(row['pyav_video_ms'])} | "
            f"{cell(row['torchcodec_video_ms'])} | {row['frames']} | {cell(row['pyav_audio_ms'])} | "
            f"{cell(row['torchcodec_audio_ms'])} | {row['audio']} |"
        )
    for kind in ("video", "audio"):
        pairs = [(r[f"torchcodec_{kind}_ms"], r[f"pyav_{kind}_ms"]) for r in rows if r[f"torchcodec_{kind}_ms"]]
        ratio = statistics.median(t / p for t, p in pairs)
        lines.append(f"- Median torchcodec / PyAV time, {kind}: {ratio:.2f} over {len(pairs)} files.")
    with tempfile.TemporaryDirectory() as folder:
        long_video = write_five_minute_video(Path(folder) / "five_minutes.mp4")
        lines += [
            "",
            "Seeking or not (the PyAV reader's frames only; ms: median of interleaved rounds; every variant gives the "
            "same frames):",
            "",
            *reader_rows([VIDEOS_DIR / name for name in READER_VIDEOS] + [long_video], processor, args.repeats),
        ]
    if not args.no_fuzz:
        with tempfile.TemporaryDirectory() as folder:
            cases = fuzz_cases(Path(folder))
            theirs, ours = fuzz_torchcodec(cases), fuzz_pyav(cases, processor)
        lines.append(
            f"- Fuzz suite's damaged files ({len(cases)} cases: the shared seeds x {len(cases) // 5} mutations): "
            f"PyAV reader {dict(ours)}; torchcodec {dict(theirs)}."
        )
    publish("\n".join(lines), SECTION, REPO_ROOT / "BENCHMARKS.md", write=not args.no_write)


if __name__ == "__main__":
    main()
