"""PyAV decoding (avbert.media_decoding): bit-exactness with the fixture decode, the seeking reader against a plain
sequential decode, odd media written on the fly, and errors that always name the file."""

import fractions
import functools
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import tracemalloc
import wave
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from avbert.clip_sampling import ClipSampling
from avbert.media_decoding import AudioTrack, MediaDecodeError, probe, read_audio, read_frames, read_video

SHARED = Path(os.environ.get("AVBERT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
VIDEOS = SHARED / "data" / "videos"
ESC50_AUDIO = SHARED / "data" / "esc50" / "audio"
META = SHARED / "fixtures" / "original" / "preprocessing" / "preprocessing_meta.json"
KS_VIDEO = VIDEOS / "kinetics400" / "R6llTwEh07w.mp4"
MEDIA_SUFFIXES = (".mp4", ".avi", ".mkv")

needs_videos = pytest.mark.skipif(not VIDEOS.is_dir(), reason="shared videos not available (../shared/data/videos)")


def shared_videos() -> list[Path]:
    return sorted(path for path in VIDEOS.rglob("*") if path.suffix in MEDIA_SUFFIXES) if VIDEOS.is_dir() else []


def sequential_frames(path: Path) -> np.ndarray:
    """The reference: every frame of the first video stream, in decode order, converted as the fixtures were."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])])


def write_video(
    path: Path,
    num_frames: int = 30,
    width: int = 64,
    height: int = 48,
    fps: int = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    audio: str | None = None,
    rotation: int | None = None,
    container_format: str | None = None,
    pts_ms: list[int] | None = None,
) -> Path:
    """Write a small synthetic video: a red ramp over time, a green top-left marker, a blue ramp across columns.

    ``pts_ms`` gives variable frame timestamps (milliseconds); ``rotation`` writes a display matrix.
    """
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if gop:
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.codec_context.options = {"bframes": "2"}  # B-frames: decode order differs from pts order
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if pts_ms is not None:
            stream.codec_context.time_base = stream.time_base = fractions.Fraction(1, 1000)
        audio_stream = container.add_stream(audio, rate=44100, layout="mono") if audio else None
        for index in range(num_frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[..., 0] = (index * 8) % 256
            image[: height // 4, : width // 4, 1] = 255
            image[..., 2] = np.linspace(0, 255, width)[None, :]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], fractions.Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio_stream is not None:
            seconds = np.arange(int(44100 * num_frames / fps)) / 44100
            samples = (0.3 * np.sin(2 * np.pi * 440 * seconds)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            frame.sample_rate, frame.pts = 44100, 0
            container.mux(audio_stream.encode(frame))
            container.mux(audio_stream.encode())
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Parity with the fixture's decode


@needs_videos
@pytest.mark.skipif(not META.is_file(), reason="preprocessing fixtures not available")
def test_full_decode_matches_fixture_sha256():
    meta = json.loads(META.read_text())["ks_video"]
    frames = read_frames(KS_VIDEO, np.arange(303))
    assert frames.shape == (303, 256, 340, 3) and frames.dtype == np.uint8
    assert hashlib.sha256(frames.tobytes()).hexdigest() == meta["decoded_frames_sha256"]
    waveform, sample_rate = read_audio(KS_VIDEO)
    assert waveform.shape == (1, 441344) and waveform.dtype == np.float32 and sample_rate == 44100
    assert hashlib.sha256(waveform.tobytes()).hexdigest() == meta["decoded_waveform_sha256 (float32 bytes)"]


@pytest.mark.parametrize("codec", ["aac", "pcm_s16le"])
def test_audio_windows_are_slices_of_the_whole_track_in_any_order_and_overlap(tmp_path: Path, codec: str):
    """read_windows fills the spans its windows cover and cuts them out: overlapping, touching, unsorted, empty and
    past-the-end windows are exactly the slices of read_audio's waveform, for a path and for a shared file object
    read for its length first (the first pass resumes the decode the track started; planar and packed samples)."""
    path = write_video(tmp_path / f"{codec}.mkv", num_frames=60, audio=codec, container_format="matroska")
    waveform, _ = read_audio(path)
    length = waveform.shape[1]
    windows = [(30000, 50000), (0, 1000), (40000, 41000), (1000, 1000), (999, 2000), (length - 10, length + 500)]
    windows += [(length + 5, length + 50), (50000, 51024)]
    with path.open("rb") as file:
        for source, ask_length in ((path, False), (file, True)):
            track = AudioTrack(source)
            if ask_length:
                assert track.num_samples == length
            for window, (start, stop) in zip(track.read_windows(windows), windows, strict=True):
                expected = waveform[:, start:stop] if start < length else np.zeros((1, 1), np.float32)
                assert window.dtype == np.float32 and np.array_equal(window, expected), (start, stop)
                window[:] = 1.0  # each window is its own array
            assert track.num_samples == length


def test_read_video_decodes_in_the_demux_container_as_from_a_fresh_open(tmp_path: Path):
    """Decoding continues in the container of the demux pass, sought back to the first frame: the same frames as a
    sequential decode, for B-frames (x264) and for MPEG-4 part 2 (the transcoded shards)."""
    for codec in ("libx264", "mpeg4"):
        path = write_video(tmp_path / f"{codec}.mp4", num_frames=90, codec=codec, gop=30)
        reference = sequential_frames(path)
        indices = [0, 1, 2, 44, 45, 89, 89, 60]
        decoded = read_video(path, indices)
        assert np.array_equal(decoded.frames, reference[indices]), codec
        assert decoded.frames_decoded <= 90, codec  # one pass, no fallback that decodes again


@needs_videos
def test_read_video_clamps_and_the_audio_track_agrees_with_read_audio():
    indices = [302, 0, 0, 150, 500]
    decoded = read_video(KS_VIDEO, lambda info: [min(i, info.num_frames + 10) for i in indices])
    assert np.array_equal(decoded.indices, [302, 0, 0, 150, 302])  # clamped to the last frame
    assert np.array_equal(decoded.frames, read_frames(KS_VIDEO, indices))
    assert decoded.info.video.num_frames == 303 and decoded.info.video.fps == 30.0
    assert decoded.info.audio is not None and decoded.info.audio.sample_rate == 44100
    waveform, sample_rate = read_audio(KS_VIDEO)
    track = AudioTrack(KS_VIDEO)
    assert (track.sample_rate, track.channels, track.start_time) == (sample_rate, 1, 0.0)
    windows = [(0, 10), (1000, 50000), (441000, 441344 + 5), (500000, 500010)]
    for window, (start, stop) in zip(track.read_windows(windows), windows, strict=True):
        assert np.array_equal(window, waveform[:, start:stop] if start < 441344 else np.zeros((1, 1), np.float32))
    assert AudioTrack(KS_VIDEO).num_samples == track.num_samples == waveform.shape[1]
    silent = read_video(VIDEOS / "kinetics400" / "mmaction2_test.mp4", [0])
    assert silent.info.audio is None


# ---------------------------------------------------------------------------------------------------------------------
# Every shared file, and the seeking reader against a sequential decode


@needs_videos
@pytest.mark.parametrize("path", shared_videos(), ids=lambda path: path.name)
def test_probe_every_shared_video(path):
    info = probe(path)
    video = info.video
    assert info.source == str(path)
    assert video.fps > 0 and video.num_frames > 0 and video.duration > 0
    assert video.width > 0 and video.height > 0 and video.rotation == 0
    frames = read_frames(path, [0, video.num_frames - 1])
    assert frames.shape == (2, video.height, video.width, 3)


@needs_videos
def test_probe_reports_the_manifest_facts():
    info = probe(KS_VIDEO)
    assert (info.video.width, info.video.height, info.video.num_frames, info.video.fps) == (340, 256, 303, 30.0)
    assert (info.audio.sample_rate, info.audio.channels) == (44100, 1)
    mkv = probe(VIDEOS / "kinetics400" / "flipping_a_pancake.mkv")  # the container reports 0 frames: counted
    assert mkv.video.num_frames == 310 and mkv.audio.sample_rate == 48000
    nasa = probe(VIDEOS / "misc" / "nasa_13013.mp4")  # two video streams: the first one is used
    assert (nasa.video.width, nasa.video.height, nasa.video.fps) == (320, 180, 25.0)


@needs_videos
@pytest.mark.parametrize(
    "name",
    [
        "ucf101/v_SoccerJuggling_g23_c01.avi",  # XviD, 20 keyframes: seeks
        "kinetics400/flipping_a_pancake.mkv",  # no frame count in the container, 1 ms timestamps
        "activitynet/v_GGSY1Qvo990.mp4",  # 19.62 fps
        "hmdb51/RATRACE_wave_f_nm_np1_fr_goo_37.avi",  # DivX packed B-frames: sequential, one frame fewer than listed
    ],
)
def test_seeking_reader_equals_sequential_decode(name):
    path = VIDEOS / name
    reference = sequential_frames(path)
    listed = read_video(path, [0]).info.video.num_frames
    rng = np.random.default_rng(0)
    for _ in range(4):
        indices = rng.integers(0, listed + 3, size=rng.integers(1, 40))
        expected = reference[np.minimum(indices, len(reference) - 1)]
        assert np.array_equal(read_frames(path, indices), expected)


def test_seeking_skips_gops_and_is_exact(tmp_path):
    path = write_video(tmp_path / "gop5.mp4", num_frames=600, gop=5)
    reference = sequential_frames(path)
    indices = [500, 3, 3, 257, 501, 599, 20]
    decoded = read_video(path, indices)
    assert np.array_equal(decoded.frames, reference[indices])
    # 0-20 and 502-599 are decoded through (no seek for less than 120 frames), 255-257 and 500-501 after a seek.
    assert decoded.frames_decoded <= 21 + 3 + 2 + 98  # of 600


@pytest.mark.parametrize(
    ("name", "container_format"),
    [("stream.ts", "mpegts"), ("raw.h264", "h264"), ("stream.webm", "webm"), ("stream.mov", "mov")],
)
def test_containers_that_seek_badly_or_not_at_all(tmp_path, name, container_format):
    """MPEG-TS seeks land past their target and raw H.264 cannot seek: both must fall back to a sequential decode."""
    codec = "libvpx-vp9" if container_format == "webm" else "libx264"
    path = write_video(tmp_path / name, num_frames=60, gop=10, codec=codec, container_format=container_format)
    reference = sequential_frames(path)
    indices = np.random.default_rng(2).integers(0, 60, size=30)
    assert np.array_equal(read_frames(path, indices), reference[indices])


def test_edit_list_discarding_leading_frames(tmp_path):
    """Packets before an MP4 edit list's start are demuxed but decode to nothing: not frames, and not truncation."""
    path = tmp_path / "edit_list.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(31):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index * 8, np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, fractions.Fraction(1, 30)
            for packet in stream.encode(frame if index < 30 else None):
                packet.pts, packet.dts = packet.pts - 5, packet.dts - 5  # negative times: cut by an edit list
                container.mux(packet)
    reference = sequential_frames(path)
    assert len(reference) == 25
    decoded = read_video(path, [24, 0, 3])
    assert decoded.info.video.num_frames == 25 and np.array_equal(decoded.frames, reference[[24, 0, 3]])


def test_variable_frame_rate_is_indexed_by_decode_order(tmp_path):
    steps = [33, 20, 50, 33, 17] * 12
    path = write_video(
        tmp_path / "vfr.mkv",
        num_frames=60,
        gop=7,
        container_format="matroska",
        pts_ms=list(np.cumsum([0, *steps[:59]])),
    )
    reference = sequential_frames(path)
    indices = np.random.default_rng(1).integers(0, 60, size=30)
    assert np.array_equal(read_frames(path, indices), reference[indices])


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic media: codecs, pixel formats, sizes, rotation, sources


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("h264_aac.mp4", {"audio": "aac"}),
        ("mpeg4_aac.mp4", {"codec": "mpeg4", "audio": "aac"}),
        ("gray.mkv", {"pix_fmt": "gray", "container_format": "matroska"}),
        ("yuv444p.mp4", {"pix_fmt": "yuv444p"}),
        ("yuv420p10le.mkv", {"pix_fmt": "yuv420p10le", "container_format": "matroska"}),
        ("short.mp4", {"num_frames": 9}),  # 0.3 s, shorter than one clip
        ("tiny.mp4", {"width": 33, "height": 17, "pix_fmt": "yuv444p"}),  # 4:4:4 allows odd sizes
    ],
)
def test_synthetic_media(tmp_path, name, options):
    path = write_video(tmp_path / name, **options)
    reference = sequential_frames(path)
    info = probe(path)
    assert info.video.num_frames == len(reference) and info.video.fps == 30.0
    assert (info.video.height, info.video.width) == reference.shape[1:3]
    indices = [len(reference) + 5, 0, len(reference) // 2, 0]
    frames = read_frames(path, indices)
    assert frames.dtype == np.uint8 and np.array_equal(frames, reference[np.minimum(indices, len(reference) - 1)])
    if options.get("pix_fmt") == "gray":
        assert np.array_equal(frames[..., 0], frames[..., 2])
    else:
        assert frames[1, 0, -1, 2] > 200 and frames[1, -1, -1, 1] < 60  # blue ramp to the right, marker top-left
    if options.get("audio"):
        waveform, sample_rate = read_audio(path)
        assert sample_rate == 44100 and waveform.shape[0] == 1 and 0.25 < np.abs(waveform).max() < 0.35


@pytest.mark.parametrize(
    ("rotation", "marker_corner"), [(90, "bottom_left"), (-90, "top_right"), (180, "bottom_right")]
)
def test_rotation_metadata_is_applied(tmp_path, rotation, marker_corner):
    path = write_video(tmp_path / f"rotated{rotation}.mp4", rotation=rotation)
    info = probe(path)
    assert info.video.rotation == rotation
    frame = read_frames(path, [0])[0]
    expected_shape = (48, 64) if rotation == 180 else (64, 48)
    assert frame.shape[:2] == expected_shape == (info.video.height, info.video.width)
    rows, cols = np.nonzero(frame[..., 1] > 128)
    top, left = rows.mean() < frame.shape[0] / 2, cols.mean() < frame.shape[1] / 2
    corner = f"{'top' if top else 'bottom'}_{'left' if left else 'right'}"
    assert corner == marker_corner


def test_bytes_file_objects_and_paths_agree(tmp_path):
    path = write_video(tmp_path / "clip.mp4", audio="aac")
    expected = read_frames(path, [4, 2])
    assert np.array_equal(read_frames(str(path), [4, 2]), expected)
    assert np.array_equal(read_frames(path.read_bytes(), [4, 2]), expected)
    with open(path, "rb") as handle:
        assert probe(handle).source == str(path)
        assert np.array_equal(read_frames(handle, [4, 2]), expected)  # probe restored the position
        assert handle.tell() == 0

    class Unseekable(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            chunk = self.data.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    assert np.array_equal(read_frames(Unseekable(path.read_bytes()), [4, 2]), expected)

    class ReadOnly:  # only read(): no seekable(), no tell()
        def __init__(self, data: bytes) -> None:
            self.read = io.BytesIO(data).read

    assert np.array_equal(read_frames(ReadOnly(path.read_bytes()), [4, 2]), expected)


@needs_videos
def test_int16_audio_is_scaled_by_32768():
    path = VIDEOS / "ucf101" / "v_ApplyEyeMakeup_g01_c01.wav"  # packed s16 stereo
    with wave.open(str(path)) as handle:
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").reshape(-1, handle.getnchannels())
        rate = handle.getframerate()
    waveform, sample_rate = read_audio(path)
    assert sample_rate == rate == 16000
    assert np.array_equal(waveform, (pcm.T.astype(np.float32) / 32768).astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------------
# Errors: always MediaDecodeError, always naming the file


def assert_decode_error(call, source_name: str, problem: str):
    with pytest.raises(MediaDecodeError) as error:
        call()
    assert source_name in str(error.value) and problem in str(error.value)
    return error.value


def test_random_bytes(tmp_path):
    garbage = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    assert_decode_error(lambda: read_frames(garbage, [0]), "<bytes>", "cannot open")
    path = tmp_path / "garbage.mp4"
    path.write_bytes(garbage)
    for call in (probe, read_audio, lambda source: read_frames(source, [0])):
        assert_decode_error(lambda call=call: call(path), str(path), "cannot open")


def test_missing_file(tmp_path):
    assert_decode_error(lambda: read_frames(tmp_path / "missing.mp4", [0]), "missing.mp4", "cannot open")


@needs_videos
def test_truncated_files(tmp_path):
    data = KS_VIDEO.read_bytes()  # index at the end: cannot be opened
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: int(len(data) * 0.3)])
    assert_decode_error(lambda: read_frames(truncated, [0]), str(truncated), "cannot open")
    faststart = (VIDEOS / "activitynet" / "v_GGSY1Qvo990.mp4").read_bytes()  # index first: the frames are missing
    assert_decode_error(lambda: read_frames(faststart[: len(faststart) // 3], [0]), "<bytes>", "truncated")


@pytest.mark.skipif(not ESC50_AUDIO.is_dir(), reason="shared ESC-50 audio not available")
def test_audio_only_file_has_no_video_stream():
    flac = sorted(ESC50_AUDIO.glob("*.flac"))[0]
    assert_decode_error(lambda: read_frames(flac, [0]), flac.name, "no video stream")
    assert probe(flac).video is None
    waveform, sample_rate = read_audio(flac)
    assert waveform.shape == (1, 220500) and sample_rate == 44100


def test_zero_frame_container(tmp_path):
    path = tmp_path / "empty.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    assert probe(path).video.num_frames == 0
    assert_decode_error(lambda: read_frames(path, [0]), str(path), "no video frames")
    assert_decode_error(lambda: read_audio(path), str(path), "no audio stream")


def write_adts(path: Path, channels: int, num_samples: int = 8000, rate: int = 16000) -> bytes:
    with av.open(str(path), "w", format="adts") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono" if channels == 1 else "stereo")
        tone = np.sin(np.arange(num_samples, dtype=np.float32) / 10) * 0.3
        frame = av.AudioFrame.from_ndarray(np.tile(tone, (channels, 1)), format="fltp", layout=stream.layout.name)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path.read_bytes()


def test_audio_without_samples_or_changing_layout_is_refused(tmp_path):
    """read_audio and AudioTrack refuse a stream that decodes to nothing and one whose layout changes mid-stream;
    windows that end before the change still read (the track is decoded only as far as the windows go)."""
    empty = tmp_path / "empty.wav"
    with av.open(str(empty), "w") as container:
        container.add_stream("pcm_s16le", rate=16000)
        container.start_encoding()
    for call in (read_audio, AudioTrack):
        assert_decode_error(functools.partial(call, empty), str(empty), "holds no decodable samples")
    mixed = tmp_path / "mixed.aac"
    mixed.write_bytes(write_adts(tmp_path / "mono.aac", 1) + write_adts(tmp_path / "stereo.aac", 2))
    assert_decode_error(lambda: read_audio(mixed), str(mixed), "changes mid-stream")
    track = AudioTrack(mixed)
    assert [window.shape for window in track.read_windows([(0, 100), (5000, 5100)])] == [(1, 100), (1, 100)]
    assert_decode_error(lambda: track.read_windows([(0, 100), (15000, 15100)]), str(mixed), "changes mid-stream")


def test_bad_indices_and_pickling(tmp_path):
    path = write_video(tmp_path / "clip.mp4")
    with pytest.raises(MediaDecodeError, match="non-negative"):
        read_frames(path, [-1])
    assert read_frames(path, []).shape == (0, 48, 64, 3)
    error = pickle.loads(pickle.dumps(MediaDecodeError("clip.mp4", "no video frames")))
    assert isinstance(error, MediaDecodeError) and str(error) == "clip.mp4: no video frames"


def test_allocation_failures_name_the_file(tmp_path, monkeypatch):
    """Out of memory while decoding or preprocessing (numpy's MemoryError, torch's allocator RuntimeError) is a
    MediaDecodeError naming the file: batch tools skip and report it as any other bad file."""
    import avbert.media_decoding as media_decoding
    import avbert.video_processing_avbert as video_processing
    from avbert import AVBertFeatureExtractor, AVBertProcessor, AVBertVideoProcessor
    from avbert.data.synthetic import write_av_file

    frames = np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    path = write_av_file(tmp_path / "big.mp4", frames, 30, np.zeros(16000, np.float32), 16000)
    video = AVBertVideoProcessor(num_clips=2, num_frames=4, size={"shortest_edge": 16}, crop_size=16)
    processor = AVBertProcessor(AVBertFeatureExtractor(num_clips=2, clip_samples=4000), video)

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.2 GiB for an array")

    def torch_no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 7730941132 bytes")

    for module, name, failure in [
        (media_decoding, "_audio_frame_samples", no_memory),  # inside the decoder
        (media_decoding, "_gather", no_memory),
        (video_processing, "_clips", torch_no_memory),  # preprocessing the decoded frames
    ]:
        with monkeypatch.context() as patch:
            patch.setattr(module, name, failure)
            with pytest.raises(MediaDecodeError, match=r"big\.mp4: (out of memory|decoding failed: MemoryError)"):
                processor(videos=str(path))
    with monkeypatch.context() as patch:
        patch.setattr(video_processing, "_clips", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
        with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not disguised
            video(str(path))


def test_a_memory_limit_gives_a_named_error(tmp_path):
    """A real limit (RLIMIT_AS) in a fresh process: the allocation fails inside decoding and is reported by name."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import pathlib, resource, numpy as np
        from avbert import AVBertVideoProcessor, MediaDecodeError
        from avbert.data.synthetic import write_av_file
        frames = np.broadcast_to(np.arange(60, dtype=np.uint8)[:, None, None, None], (60, 720, 1280, 3))
        path = pathlib.Path({str(tmp_path / "hd.mp4")!r})
        write_av_file(path, np.ascontiguousarray(frames), 30, np.zeros(16000, np.float32), 16000)
        del frames
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + 100 * 2**20, hard))
        try:
            # Whole frames at source size (no resize, no crop) the 60 frames need 166 MB; resized and cropped as
            # decoded they take 3 MB and fit.
            AVBertVideoProcessor(num_clips=10, num_frames=32, do_resize=False, do_center_crop=False)(path)
        except MediaDecodeError as error:
            print("NAMED", error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "NAMED" in result.stdout and "hd.mp4" in result.stdout, result.stdout + result.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------------
# Streams of different extents, late starts, variable frame rates, odd time bases: valid files a download looks like
# (written by the ffmpeg command line, as real files are), against the same files cut short

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg command writes these files")
# Second k of the sound is a tone of TONE_STEP_HZ * (k + 1): a window's pitch says which second it was read from.
TONE_STEP_HZ = 500
TONES = f"aevalsrc=0.5*sin(2*PI*t*{TONE_STEP_HZ}*(1+floor(t))):s=16000:d={{seconds}}"
VIDEO = "testsrc2=size=64x48:rate={rate}:duration={seconds}"


def ffmpeg(path: Path, *arguments: str) -> Path:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *arguments, str(path)], check=True)
    return path


def video_with_tones(path: Path, video_seconds: float, sound_seconds: float, *options: str, offset: float = 0) -> Path:
    """``video_seconds`` of 25 fps video (starting ``offset`` s late) over ``sound_seconds`` of stepped tones."""
    late = ["-itsoffset", str(offset)] if offset else []
    video = ["-f", "lavfi", "-i", VIDEO.format(rate=25, seconds=video_seconds)]
    sound = ["-f", "lavfi", "-i", TONES.format(seconds=sound_seconds)]
    return ffmpeg(path, *late, *video, *sound, "-g", "5", *options)


def heard_seconds(path: Path, num_clips: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """The second of the file's clock each clip starts in, and the second its sound window was read from (by its
    pitch): the window placement of AVBertProcessor (ClipSampling's "timestamp" alignment, AudioTrack's windows)."""
    track = AudioTrack(path)
    decoded = read_video(path, [0])
    video = decoded.info.video
    sampling = ClipSampling(num_clips=num_clips, num_frames=4, frame_sampling_rate=1)
    window = track.sample_rate // 10
    starts = sampling.audio_window_starts(
        video.num_frames,
        video.fps,
        alignment="timestamp",
        window_seconds=window / track.sample_rate,
        audio_start_time=track.start_time,
        frame_times=decoded.frame_times,
        video_start_time=video.start_time,
    )
    first_samples = np.round(starts * track.sample_rate).astype(int)
    windows = track.read_windows([(int(start), int(start) + window) for start in first_samples])
    pitch = [np.argmax(np.abs(np.fft.rfft(samples[0]))) * track.sample_rate / window for samples in windows]
    clip_times = track.start_time + starts
    return np.floor(clip_times + 0.05).astype(int), np.round(np.asarray(pitch) / TONE_STEP_HZ).astype(int) - 1


def cut(path: Path, fraction: float = 0.4) -> Path:
    truncated = path.with_name(f"truncated_{path.name}")
    truncated.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])
    return truncated


def without_track_durations(path: Path) -> Path:
    """The file without the Matroska tracks' DURATION tags (renamed, same length): as other muxers write it."""
    untagged = path.with_name(f"untagged_{path.name}")
    data = path.read_bytes()
    assert b"DURATION" in data
    untagged.write_bytes(data.replace(b"DURATION", b"XURATION"))
    return untagged


SOUND_LONGER_THAN_VIDEO = {
    "long_sound.mkv": ("-c:v", "libx264", "-c:a", "aac"),
    "long_sound.webm": ("-c:v", "libvpx", "-c:a", "libopus"),
    "long_sound.mp4": ("-c:v", "libx264", "-c:a", "aac", "-movflags", "+faststart"),
    "long_sound.avi": ("-c:v", "mpeg4", "-c:a", "pcm_s16le"),
}


@needs_ffmpeg
@pytest.mark.parametrize("name", SOUND_LONGER_THAN_VIDEO)
def test_sound_longer_than_the_video_is_not_truncation(tmp_path, name):
    """4 s of video over 6 s of sound: the video is judged against its own extent, not the container's (the sound's);
    the same file cut short is still refused, by name."""
    path = video_with_tones(tmp_path / name, 4, 6, *SOUND_LONGER_THAN_VIDEO[name])
    reference = sequential_frames(path)
    decoded = read_video(path, [0, 50, 99])
    assert decoded.info.video.num_frames == len(reference) == 100
    assert np.array_equal(decoded.frames, reference[[0, 50, 99]])
    clip_seconds, heard = heard_seconds(path)
    assert np.array_equal(heard, clip_seconds) and clip_seconds.max() == 3
    truncated = cut(path)
    assert_decode_error(lambda: read_video(truncated, [0]), str(truncated), "truncated or corrupt")


@needs_ffmpeg
def test_video_starting_late_is_placed_on_the_sound_clock(tmp_path):
    """The video starts 2 s after the sound (``-itsoffset``): accepted, frame times start at 2 s, and every clip
    hears the second it is shown in."""
    path = video_with_tones(tmp_path / "late_video.mkv", 4, 6, "-c:v", "libx264", "-c:a", "aac", offset=2)
    decoded = read_video(path, np.arange(100))
    assert np.array_equal(decoded.frames, sequential_frames(path))
    assert 2.0 <= decoded.frame_times[0] < 2.1 and decoded.info.video.start_time == decoded.frame_times[0]
    clip_seconds, heard = heard_seconds(path)
    assert np.array_equal(heard, clip_seconds) and clip_seconds.min() == 2 and clip_seconds.max() == 5
    truncated = cut(path)
    assert_decode_error(lambda: read_video(truncated, [0]), str(truncated), "truncated or corrupt")


@needs_ffmpeg
def test_one_frame_over_seconds_of_sound(tmp_path):
    path = video_with_tones(tmp_path / "one_frame.mkv", 0.04, 5, "-c:v", "libx264", "-c:a", "aac")
    decoded = read_video(path, [0, 3])
    assert decoded.info.video.num_frames == 1 and np.array_equal(decoded.frames, sequential_frames(path)[[0, 0]])
    assert read_audio(path)[0].shape[1] >= 5 * 16000


@needs_ffmpeg
@pytest.mark.parametrize("name", ["long_sound.mkv", "late_video.mkv", "long_sound.webm"])
def test_matroska_without_track_durations_is_judged_by_its_longest_stream(tmp_path, name):
    """Without the tracks' own DURATION tags, the container's duration is the longest stream's: a file whose sound
    reaches it is whole, one whose every stream stops short is truncated."""
    options = SOUND_LONGER_THAN_VIDEO.get(name, ("-c:v", "libx264", "-c:a", "aac"))
    path = video_with_tones(tmp_path / name, 4, 6, *options, offset=2 if name.startswith("late") else 0)
    untagged = without_track_durations(path)
    assert np.array_equal(read_video(untagged, [0, 99]).frames, sequential_frames(path)[[0, 99]])
    truncated = cut(untagged)
    assert_decode_error(lambda: read_video(truncated, [0]), str(truncated), "truncated or corrupt")


@needs_ffmpeg
def test_variable_frame_rate_avi_lists_its_dropped_frames(tmp_path):
    """ffmpeg writes the frames a VFR stream skips into an AVI as empty chunks, which the header counts (110) and
    the demuxer skips (40 remain): the file is whole, index i is the i-th decoded frame at its own time."""
    kept = [index for index in range(120) if index % 15 < 5]
    video = ["-f", "lavfi", "-i", VIDEO.format(rate=30, seconds=4), "-vf", "select='lt(mod(n,15),5)'"]
    path = ffmpeg(tmp_path / "vfr.avi", *video, "-fps_mode", "vfr", "-c:v", "mpeg4", "-g", "5")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames > len(kept) + 2  # the header lists the dropped frames
    decoded = read_video(path, np.arange(len(kept)))
    assert decoded.info.video.num_frames == len(kept)
    assert np.array_equal(decoded.frames, sequential_frames(path))
    np.testing.assert_allclose(decoded.frame_times, np.asarray(kept) / 30)
    truncated = cut(path)
    assert_decode_error(lambda: read_video(truncated, [0]), str(truncated), "truncated or corrupt")


def matroska_in_nanoseconds(source: Path, destination: Path) -> Path:
    """Rewrite an FFmpeg Matroska file (1 ms TimecodeScale) with a 1 ns TimecodeScale: every timestamp multiplied by
    10^6 and each block in a cluster of its own (a block's 16-bit offset from its cluster cannot hold a millisecond
    in nanoseconds). Seek head and cues, which point at byte positions, are left out; FFmpeg does without them. The
    source must be written without CRC-32 elements (``-write_crc32 0``)."""

    def vint(data: bytes, position: int, marker: bool) -> tuple[int, int, bool]:
        length = 9 - data[position].bit_length()
        value = int.from_bytes(data[position : position + length], "big")
        unknown = value == (1 << (7 * length)) - 1 | (1 << (7 * length))
        return (value if marker else value & ((1 << (7 * length)) - 1)), position + length, unknown

    def children(data: bytes) -> Iterator[tuple[int, bytes]]:
        position = 0
        while position < len(data):
            element_id, position, _ = vint(data, position, marker=True)
            size, position, unknown = vint(data, position, marker=False)
            end = len(data) if unknown else position + size
            yield element_id, data[position:end]
            position = end

    def element(element_id: int, payload: bytes) -> bytes:
        length = next(n for n in range(1, 9) if len(payload) < (1 << (7 * n)) - 1)
        size = ((1 << (7 * length)) | len(payload)).to_bytes(length, "big")
        return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + size + payload

    def uint(value: int) -> bytes:
        return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")

    scale = 10**6
    out = b""
    for element_id, body in children(source.read_bytes()):
        if element_id != 0x18538067:  # the EBML header
            out += element(element_id, body)
            continue
        segment = b""
        for child, payload in children(body):
            if child == 0x1549A966:  # Info: TimecodeScale 1, Duration (a float in TimecodeScale units) scaled
                fields = dict(children(payload))
                fields[0x2AD7B1] = uint(1)
                duration = struct.unpack(">f" if len(fields[0x4489]) == 4 else ">d", fields[0x4489])[0]
                fields[0x4489] = struct.pack(">d", duration * scale)
                segment += element(child, b"".join(element(key, value) for key, value in fields.items()))
            elif child == 0x1F43B675:  # Cluster: Timestamp, then SimpleBlocks / BlockGroups
                cluster_time = 0
                for item, value in children(payload):
                    if item == 0xE7:
                        cluster_time = int.from_bytes(value, "big")
                    if item not in (0xA3, 0xA0):  # SimpleBlock, BlockGroup
                        continue
                    parts = list(children(value)) if item == 0xA0 else [(0xA1, value)]
                    rebuilt, block_time = b"", 0
                    for part, content in parts:
                        if part == 0xA1:  # the block: track number, int16 time offset, flags, frames
                            _, offset, _ = vint(content, 0, marker=False)
                            block_time = cluster_time + struct.unpack(">h", content[offset : offset + 2])[0]
                            content = content[:offset] + b"\0\0" + content[offset + 2 :]
                        elif part == 0x9B:  # BlockDuration
                            content = uint(int.from_bytes(content, "big") * scale)
                        rebuilt += element(part, content) if item == 0xA0 else content
                    block = element(item, rebuilt)
                    segment += element(0x1F43B675, element(0xE7, uint(block_time * scale)) + block)
            elif child not in (0x114D9B74, 0x1C53BB6B, 0xEC):  # SeekHead, Cues, Void
                segment += element(child, payload)
        out += element(element_id, segment)
    destination.write_bytes(out)
    return destination


@needs_ffmpeg
def test_nanosecond_matroska_time_base(tmp_path):
    """A Matroska file whose TimecodeScale is 1 ns (time base 1/10^9) is placed in time like its millisecond twin;
    one whose TimecodeScale says 1 ns for timestamps written in milliseconds (its 3 s last 3 us) is refused, where
    it used to put every sound window at 0 s."""
    options = ("-c:v", "libx264", "-c:a", "aac", "-write_crc32", "0")  # the rewrite would invalidate the checksums
    milliseconds = video_with_tones(tmp_path / "ms.mkv", 3, 3, *options)
    nanoseconds = matroska_in_nanoseconds(milliseconds, tmp_path / "ns.mkv")
    with av.open(str(nanoseconds)) as container:
        assert container.streams.video[0].time_base == fractions.Fraction(1, 10**9)
    decoded = read_video(nanoseconds, np.arange(75))
    assert np.array_equal(decoded.frames, sequential_frames(milliseconds))
    np.testing.assert_allclose(decoded.frame_times, read_video(milliseconds, [0]).frame_times)
    clip_seconds, heard = heard_seconds(nanoseconds)
    assert np.array_equal(heard, clip_seconds) and clip_seconds.max() == 2

    data = bytearray(milliseconds.read_bytes())
    scale_at = data.index(bytes.fromhex("2AD7B1830F4240"))  # TimecodeScale, 3 bytes: 1000000
    data[scale_at + 4 : scale_at + 7] = (1).to_bytes(3, "big")
    mislabelled = tmp_path / "mislabelled.mkv"
    mislabelled.write_bytes(data)
    for call in (functools.partial(read_video, mislabelled, [0]), functools.partial(AudioTrack, mislabelled)):
        assert_decode_error(call, str(mislabelled), "inconsistent timestamps")
    untagged = without_track_durations(mislabelled)
    assert_decode_error(lambda: read_video(untagged, [0]), str(untagged), "inconsistent timestamps")


# ---------------------------------------------------------------------------------------------------------------------
# avbert-prepare check's sound probe (decode_problem): the whole track decoded, none of it kept


def write_long_sound(path: Path, seconds: int, garbage_after_packet: int | None = None) -> Path:
    """2 s of video over ``seconds`` of 48 kHz stereo aac; audio packets after ``garbage_after_packet`` are replaced by
    random bytes of the same size (a track that stops decoding part-way)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=48000, layout="stereo")
        for index in range(50):
            image = np.full((48, 64, 3), index * 5, np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)).astype(np.float32)
        packets = []
        for start in range(0, 48000 * seconds, 1024):
            samples = np.tile(tone[None, start % 48000 : start % 48000 + 1024], (2, 1))
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, start
            packets += audio.encode(frame)
        for number, packet in enumerate([*packets, *audio.encode()]):
            if garbage_after_packet is not None and number > garbage_after_packet:
                packet.update(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
            container.mux(packet)
    return path


def test_prepare_check_decodes_the_whole_sound_track_in_bounded_memory(tmp_path):
    """40 s of 48 kHz stereo (15 MB as float32) under 2 s of video: the check's Python/numpy peak stays under 3 MB
    (reading the waveform took it twice); a track whose packets turn to garbage after the first second is still
    found, whichever recipe reads the sound."""
    from avbert.data.prepare import decode_problem

    path = write_long_sound(tmp_path / "long_sound.mkv", 40)
    decode_problem(path, "audio-visual")  # imports and first-use allocations out of the measurement
    tracemalloc.start()
    try:
        problems = [decode_problem(path, "audio-visual"), decode_problem(path, "audio")]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problems == [None, None] and peak < 3 * 2**20, peak

    damaged = write_long_sound(tmp_path / "damaged_sound.mkv", 4, garbage_after_packet=50)
    assert read_video(damaged, [0, 49]).frames.shape[0] == 2 and AudioTrack(damaged).sample_rate == 48000
    for modality in ("audio-visual", "audio"):
        assert "decoding failed" in decode_problem(damaged, modality)
    assert decode_problem(damaged, "visual") is None
