"""Bounded, deterministic fuzzing of the media readers (avbert.media_decoding) and of AVBertVideoProcessor on files.

Seeds: a few small shared media files (one per container/codec family, plus an ESC-50 flac) and a 1 s mpeg4 + aac mp4
written here, so that the test runs without the shared data too. Each seed is damaged in fixed, reproducible ways
(truncations, bit flips, byte-range overwrites, the container header without its media) and random bytes are tried on
their own. Every case is written to a file and read through its path; half the cases are also read from ``bytes``, the
other half from an ``io.BytesIO``.

The contract under test (media_decoding's docstring): every call either returns a sane result (shapes, dtypes, finite
values) or raises :class:`MediaDecodeError` naming the source (its path, ``<bytes>`` or ``<file object>``); no other
exception type, and no hang. Each case runs under a SIGALRM watchdog, and a faulthandler backstop ends the run with
tracebacks should a call hang inside C code where the watchdog cannot interrupt it.

Two source forms that misbehaved on undamaged seeds were found while building the cases (a file object not at position
0, a non-contiguous memoryview); regression tests for them are at the end.

Set ``AVBERT_FUZZ_STATS=/some/file.json`` to get the outcome counts and timings (``-v`` prints a summary line);
``AVBERT_FUZZ_CASE_BUDGET_S`` changes the per-case time budget.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import io
import json
import os
import pickle
import signal
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch

from avbert.media_decoding import MediaDecodeError, MediaInfo, probe, read_audio, read_frames, read_video
from avbert.video_processing_avbert import AVBertVideoProcessor

SHARED_DATA = Path(os.environ.get("AVBERT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")) / "data"

BASE_SEED = 20_240_611
# Wall-clock budget for all the calls of one case (one source read one way). An undamaged seed takes ~0.3 s.
CASE_BUDGET_S = float(os.environ.get("AVBERT_FUZZ_CASE_BUDGET_S", "10"))
# The watchdog is three-fold: SIGALRM interrupts Python-level loops; PyAV swallows an exception raised inside its
# file-object read callback, so the case also checks its clock before each call and at its end; and a hang inside C
# code, which neither can interrupt, hits this backstop: faulthandler dumps every thread's stack and ends the process.
HARD_HANG_S = 60.0

NUM_CLIPS, NUM_FRAMES, CROP = 2, 4, 128
FALLBACK_INDICES = [0, 5, 10]

# The smallest shared file of each container/codec family (and the smallest ESC-50 clip). Keys name the family, test
# ids the file.
SHARED_SEEDS = {
    "avi-mpeg4": "videos/hmdb51/TrumanShow_wave_f_nm_np1_fr_med_26.avi",  # 240 KB, no audio, 49 frames
    "avi-mpeg4-mp3": "videos/ucf101/v_ApplyEyeMakeup_g01_c01.avi",  # 290 KB, mp3 audio
    "mkv-h264-opus": "videos/kinetics400/flipping_a_pancake.mkv",  # 430 KB, no frame count in the container
    "mp4-h264-aac": "videos/kinetics400/SOX5yA1l24A.mp4",  # 550 KB, moov after mdat
    "flac": "esc50/audio/4-187384-A-34.flac",  # 35 KB, audio only
}
GENERATED_SEED = "mp4-mpeg4-aac"  # written by the `generated_mp4` fixture: moov before mdat (faststart)
GENERATED_NAME = "generated_mpeg4_aac.mp4"
SEEDS = (*SHARED_SEEDS, GENERATED_SEED)
SEED_NAMES = {**{seed: Path(relative).name for seed, relative in SHARED_SEEDS.items()}, GENERATED_SEED: GENERATED_NAME}

TRUNCATIONS = {"trunc-1pct": 0.01, "trunc-10pct": 0.10, "trunc-50pct": 0.50, "trunc-90pct": 0.90, "trunc-99pct": 0.99}
BIT_FLIPS = {"flip-1": 1, "flip-10": 10, "flip-100": 100}
# (region, longest run, fill): random bytes anywhere, random bytes inside the first 10% where the container's
# structures live, and a zeroed block (what a lost disk/network block leaves behind).
OVERWRITES = {
    "overwrite-body": (1.0, 4096, "random"),
    "overwrite-head": (0.1, 256, "random"),
    "overwrite-zeros": (1.0, 16384, "zeros"),
}
HEADER_ONLY = "header-only"
MUTATIONS = (*TRUNCATIONS, *BIT_FLIPS, *OVERWRITES, HEADER_ONLY)
RANDOM_LENGTHS = {
    "random-0": (0, ".mp4"),
    "random-1": (1, ".avi"),
    "random-100": (100, ".mkv"),
    "random-10k": (10_000, ".mp4"),
}


# ---------------------------------------------------------------------------------------------------------------------
# Seeds and mutations


def _write_generated_mp4(path: Path) -> Path:
    """1 s of 64x48 mpeg4 video at 25 fps (GOP 10) and 44.1 kHz mono aac, moov first."""
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.gop_size = 10
        audio = container.add_stream("aac", rate=44100, layout="mono")
        for index in range(25):
            image = np.zeros((48, 64, 3), np.uint8)
            image[..., 0] = index * 10
            image[:12, :16, 1] = 255
            image[..., 2] = np.linspace(0, 255, 64)[None, :]
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(44100) / 44100)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = 44100, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    return path


@pytest.fixture(scope="session")
def generated_mp4(tmp_path_factory) -> Path:
    return _write_generated_mp4(tmp_path_factory.mktemp("fuzz_seed") / GENERATED_NAME)


@pytest.fixture
def seed_file(generated_mp4) -> Callable[[str], Path]:
    def _seed_file(seed: str) -> Path:
        if seed == GENERATED_SEED:
            return generated_mp4
        path = SHARED_DATA / SHARED_SEEDS[seed]
        if not path.is_file():
            pytest.skip(f"shared seed {path} not available")
        return path

    return _seed_file


def _case_rng(*key: str) -> np.random.Generator:
    """A generator for one case, independent of which other cases run."""
    return np.random.default_rng([BASE_SEED, zlib.crc32("/".join(key).encode())])


def _truncate(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _flip_bits(data: bytes, count: int, rng: np.random.Generator) -> bytes:
    array = np.frombuffer(data, np.uint8).copy()
    positions = rng.integers(0, len(array), count)
    array[positions] ^= (1 << rng.integers(0, 8, count)).astype(np.uint8)
    return array.tobytes()


def _overwrite(data: bytes, region: float, longest: int, fill: str, rng: np.random.Generator) -> bytes:
    array = np.frombuffer(data, np.uint8).copy()
    length = int(rng.integers(1, longest + 1))
    start = int(rng.integers(0, max(int(len(array) * region) - length, 1)))
    count = len(array[start : start + length])
    array[start : start + length] = rng.integers(0, 256, count, dtype=np.uint8) if fill == "random" else 0
    return array.tobytes()


def _mp4_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level ISO-BMFF boxes as (type, start, end)."""
    boxes, position = [], 0
    while position + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        if size == 1 and position + 16 <= len(data):
            size = struct.unpack(">Q", data[position + 8 : position + 16])[0]
        elif size == 0:
            size = len(data) - position
        if size < 8:
            break
        boxes.append((kind, position, min(position + size, len(data))))
        position += size
    return boxes


def _header_only(data: bytes, suffix: str) -> bytes:
    """The container's header without any media payload.

    mp4: every top-level box but ``mdat`` (a prefix when moov comes first); avi: up to the ``movi`` list; mkv: up to
    the first Cluster; flac: the metadata blocks. The offsets these headers hold then point past the end of the file.
    """
    if suffix == ".mp4":
        return b"".join(data[start:end] for kind, start, end in _mp4_boxes(data) if kind != b"mdat")
    if suffix == ".avi":
        return data[: data.index(b"movi") + 4]
    if suffix == ".mkv":
        return data[: data.index(b"\x1f\x43\xb6\x75")]
    if suffix == ".flac":
        position, last = 4, False
        while not last:
            last = bool(data[position] & 0x80)
            position += 4 + int.from_bytes(data[position + 1 : position + 4], "big")
        return data[:position]
    raise AssertionError(f"no header rule for {suffix}")


def _mutate(data: bytes, suffix: str, mutation: str, rng: np.random.Generator) -> bytes:
    if mutation in TRUNCATIONS:
        return _truncate(data, TRUNCATIONS[mutation])
    if mutation in BIT_FLIPS:
        return _flip_bits(data, BIT_FLIPS[mutation], rng)
    if mutation in OVERWRITES:
        return _overwrite(data, *OVERWRITES[mutation], rng)
    assert mutation == HEADER_ONLY
    return _header_only(data, suffix)


# ---------------------------------------------------------------------------------------------------------------------
# Running one case under a watchdog and checking every outcome


class _CaseTimeout(BaseException):
    """Raised by the SIGALRM handler. A BaseException, so that the readers' `except Exception` cannot disguise it."""


def _on_alarm(signum, frame):
    raise _CaseTimeout


class _Stats:
    """Outcome counts and timings of the whole module, for the summary."""

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (call, "decoded" | "MediaDecodeError" | "FAILED")
        self.case_seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def summary(self) -> dict[str, Any]:
        slowest = max(self.case_seconds.items(), key=lambda item: item[1], default=("", 0.0))
        calls = sorted({call for call, _ in self.outcomes})
        return {
            "cases": len(self.case_seconds),
            "calls": sum(self.outcomes.values()),
            "decoded": sum(n for (_, outcome), n in self.outcomes.items() if outcome == "decoded"),
            "media_decode_error": sum(n for (_, outcome), n in self.outcomes.items() if outcome == "MediaDecodeError"),
            "failed": sum(n for (_, outcome), n in self.outcomes.items() if outcome == "FAILED"),
            "by_call": {call: {o: n for (c, o), n in self.outcomes.items() if c == call} for call in calls},
            "slowest_case": {"case": slowest[0], "seconds": round(slowest[1], 3)},
            "case_seconds_total": round(sum(self.case_seconds.values()), 3),
            "wall_seconds": round(time.perf_counter() - self.started, 3),
        }


@pytest.fixture(scope="module")
def fuzz_stats(request):
    stats = _Stats()
    yield stats
    summary = stats.summary()
    if os.environ.get("AVBERT_FUZZ_STATS"):
        Path(os.environ["AVBERT_FUZZ_STATS"]).write_text(json.dumps(summary, indent=2))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and request.config.get_verbosity() > 0:
        reporter.write_line(f"\nmedia fuzz: {json.dumps({k: v for k, v in summary.items() if k != 'by_call'})}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and np.isfinite(value)


def _check_waveform(waveform: Any, sample_rate: Any) -> None:
    assert isinstance(waveform, np.ndarray) and waveform.dtype == np.float32, type(waveform)
    assert waveform.ndim == 2 and waveform.shape[0] >= 1 and waveform.shape[1] >= 1, waveform.shape
    assert np.isfinite(waveform).all(), "non-finite audio samples"
    assert isinstance(sample_rate, int) and sample_rate > 0, sample_rate


def _check_info(info: MediaInfo, name: str) -> None:
    assert isinstance(info, MediaInfo) and info.source == name, info
    if info.video is not None:
        video = info.video
        assert _finite(video.fps) and video.fps >= 0, video
        assert _finite(video.duration) and _finite(video.start_time), video
        assert isinstance(video.num_frames, int) and video.num_frames >= 0, video
        assert video.width >= 0 and video.height >= 0 and -180 < video.rotation <= 180, video
    if info.audio is not None:
        audio = info.audio
        assert audio.sample_rate >= 0 and audio.channels >= 0, audio
        assert _finite(audio.duration) and _finite(audio.start_time), audio


def _check_decoded(decoded: Any, requested: list[int], name: str) -> None:
    _check_info(decoded.info, name)
    video = decoded.info.video
    assert video is not None and video.num_frames >= 1, video
    frames = decoded.frames
    assert isinstance(frames, np.ndarray) and frames.dtype == np.uint8, type(frames)
    assert frames.ndim == 4 and frames.shape[0] == len(requested) and frames.shape[3] == 3, frames.shape
    assert frames.shape[1] >= 1 and frames.shape[2] >= 1, frames.shape
    assert (frames.shape[1], frames.shape[2]) == (video.height, video.width), (frames.shape, video)
    assert np.array_equal(decoded.indices, np.minimum(requested, video.num_frames - 1)), decoded.indices
    assert decoded.frames_decoded >= 1


def _check_pixel_values(output: Any) -> None:
    pixel_values = output["pixel_values"]
    assert isinstance(pixel_values, torch.Tensor) and pixel_values.dtype == torch.float32, type(pixel_values)
    assert tuple(pixel_values.shape) == (1, NUM_CLIPS, 3, NUM_FRAMES, CROP, CROP), tuple(pixel_values.shape)
    assert torch.isfinite(pixel_values).all(), "non-finite pixel values"


def _check_error(error: MediaDecodeError, name: str, marker: str) -> None:
    assert error.source_name == name, (error.source_name, name)
    assert marker in str(error), f"{marker!r} not in {str(error)!r}"
    assert error.problem and str(error) == f"{name}: {error.problem}"
    copy = pickle.loads(pickle.dumps(error))  # DataLoader workers send exceptions pickled
    assert type(copy) is MediaDecodeError and str(copy) == str(error)


class _Case:
    """The calls on one source, each with its outcome check; failures are collected, not raised one by one."""

    def __init__(self, label: str, name: str, marker: str, stats: _Stats, file: io.BytesIO | None = None) -> None:
        self.label, self.name, self.marker, self.stats, self.file = label, name, marker, stats, file
        self.failures: list[str] = []
        self.timed_out = False
        self.started = time.perf_counter()

    def call(self, call: str, function: Callable[[], Any], check: Callable[[Any], None]) -> Any:
        """Run ``function``; return its result if it decoded and passed ``check``, else None."""
        if not self.timed_out and time.perf_counter() - self.started > CASE_BUDGET_S:  # a swallowed alarm
            self.timed_out = True
            self.failures.append(f"{self.label}: over the {CASE_BUDGET_S} s case budget before {call}")
        if self.timed_out:
            return None
        outcome, result = "FAILED", None
        try:
            try:
                value = function()
            except MediaDecodeError as error:
                _check_error(error, self.name, self.marker)
                outcome = "MediaDecodeError"
            else:
                check(value)
                outcome, result = "decoded", value
            if self.file is not None:
                assert self.file.tell() == 0, f"file object left at {self.file.tell()}, not restored to 0"
        except _CaseTimeout:
            self.timed_out = True
            self.failures.append(f"{self.label} {call}: no result within the {CASE_BUDGET_S} s case budget (hang?)")
        except Exception as error:
            detail = "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=-4))
            self.failures.append(f"{self.label} {call}: {type(error).__name__}: {error}\n{detail}")
        self.stats.outcomes[call, outcome] += 1
        return result


def _run_case(
    label: str, source: Any, name: str, marker: str, stats: _Stats, processor: AVBertVideoProcessor | None = None
) -> list[str]:
    """probe, read_video (first/middle/last frame, or FALLBACK_INDICES), the processor (paths only) and
    read_audio on one source, under the watchdog. Returns the failures."""
    file = source if isinstance(source, io.BytesIO) else None
    previous_handler = signal.signal(signal.SIGALRM, _on_alarm)
    if sys.__stderr__ is not None:
        faulthandler.dump_traceback_later(HARD_HANG_S, exit=True, file=sys.__stderr__)
    case = _Case(label, name, marker, stats, file)
    started = case.started
    previous_timer, _ = signal.setitimer(signal.ITIMER_REAL, CASE_BUDGET_S)
    try:
        info = case.call("probe", lambda: probe(source), lambda info: _check_info(info, name))
        count = info.video.num_frames if info is not None and info.video is not None else 0
        indices = sorted({0, count // 2, count - 1}) if count > 0 else FALLBACK_INDICES
        case.call(
            "read_video",
            lambda: read_video(source, indices),
            lambda decoded: _check_decoded(decoded, indices, name),
        )
        if processor is not None:
            case.call("processor", lambda: processor(source, return_tensors="pt"), _check_pixel_values)
        case.call("read_audio", lambda: read_audio(source), lambda result: _check_waveform(*result))
    except _CaseTimeout:  # fired between two calls
        case.failures.append(f"{label}: no result within the {CASE_BUDGET_S} s case budget")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        elapsed = time.perf_counter() - started
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_timer > 0:  # someone else's alarm (e.g. a timeout plugin): re-arm what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(previous_timer - elapsed, 1e-3))
    stats.case_seconds[label] = elapsed
    if elapsed > CASE_BUDGET_S and not case.timed_out:  # the alarm was swallowed somewhere
        case.failures.append(f"{label}: took {elapsed:.1f} s, over the {CASE_BUDGET_S} s case budget")
    return case.failures


@pytest.fixture(scope="module")
def processor() -> AVBertVideoProcessor:
    return AVBertVideoProcessor(num_clips=NUM_CLIPS, num_frames=NUM_FRAMES)


def _fuzz(data: bytes, path: Path, in_memory: str, stats: _Stats, processor: AVBertVideoProcessor) -> list[str]:
    """One input: read through its path (all four calls), then from ``bytes`` and/or a ``BytesIO``."""
    path.write_bytes(data)
    failures = _run_case(f"{path.name} [path]", path, str(path), path.name, stats, processor)
    if in_memory in ("bytes", "both"):
        failures += _run_case(f"{path.name} [bytes]", data, "<bytes>", "<bytes>", stats)
    if in_memory in ("BytesIO", "both"):
        failures += _run_case(f"{path.name} [BytesIO]", io.BytesIO(data), "<file object>", "<file object>", stats)
    return failures


def _fuzz_params() -> list[Any]:
    return [
        pytest.param(seed, mutation, id=f"{SEED_NAMES[seed]}-{mutation}") for seed in SEEDS for mutation in MUTATIONS
    ]


needs_alarm = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="the watchdog needs SIGALRM (POSIX)")


@needs_alarm
@pytest.mark.parametrize(("seed", "mutation"), _fuzz_params())
def test_damaged_media_decode_or_raise_media_decode_error(seed, mutation, seed_file, tmp_path, fuzz_stats, processor):
    source = seed_file(seed)
    data = _mutate(source.read_bytes(), source.suffix, mutation, _case_rng(seed, mutation))
    # Alternate the in-memory form, so each seed and each mutation is read from bytes and from a BytesIO.
    in_memory = ("bytes", "BytesIO")[(SEEDS.index(seed) + MUTATIONS.index(mutation)) % 2]
    path = tmp_path / f"{source.stem}-{mutation}{source.suffix}"
    failures = _fuzz(data, path, in_memory, fuzz_stats, processor)
    assert not failures, f"seed {source} mutated by {mutation} ({len(data)} bytes):\n" + "\n".join(failures)


@needs_alarm
@pytest.mark.parametrize("kind", list(RANDOM_LENGTHS))
def test_random_bytes_decode_or_raise_media_decode_error(kind, tmp_path, fuzz_stats, processor):
    length, suffix = RANDOM_LENGTHS[kind]
    data = _case_rng(kind).integers(0, 256, length, dtype=np.uint8).tobytes()
    failures = _fuzz(data, tmp_path / f"{kind}{suffix}", "both", fuzz_stats, processor)
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------------------------------
# Source forms that once misbehaved (regression tests)

OFFSET = 1000


@pytest.mark.parametrize("seed", SEEDS, ids=[SEED_NAMES[seed] for seed in SEEDS])
def test_file_object_is_read_from_its_current_position(seed, seed_file):
    """The module promises that file objects are read from their current position (and put back there): media
    stored after other bytes, e.g. a member of an uncompressed archive, must read as the file itself does."""
    path = seed_file(seed)
    file = io.BytesIO(bytes(OFFSET) + path.read_bytes())
    file.seek(OFFSET)
    expected = probe(path)
    info = probe(file)
    assert file.tell() == OFFSET
    assert dataclasses.replace(info, source=str(path)) == expected
    if expected.video is None:
        waveform, sample_rate = read_audio(file)
        assert file.tell() == OFFSET
        reference, reference_rate = read_audio(path)
        assert sample_rate == reference_rate and waveform.shape == reference.shape, (waveform.shape, reference.shape)
        assert np.array_equal(waveform, reference)
        return
    count = expected.video.num_frames
    indices = [0, count // 3, count // 2, count - 1]
    decoded = read_video(file, indices)
    assert file.tell() == OFFSET
    reference = read_video(path, indices)
    assert decoded.info.video == reference.info.video
    assert np.array_equal(decoded.frames, reference.frames)
    if expected.audio is not None:
        waveform, _ = read_audio(file)
        assert file.tell() == OFFSET
        assert np.array_equal(waveform, read_audio(path)[0])


def test_non_contiguous_memoryview_reads_like_bytes(generated_mp4):
    data = generated_mp4.read_bytes()
    view = memoryview(np.frombuffer(data, np.uint8).repeat(2)[::2])  # the same bytes, every other element of a copy
    assert not view.c_contiguous and view.tobytes() == data
    assert probe(view) == dataclasses.replace(probe(data), source="<bytes>")
    assert np.array_equal(read_frames(view, [0, 24]), read_frames(data, [0, 24]))
