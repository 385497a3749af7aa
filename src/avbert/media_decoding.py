"""Decoding of video frames and audio with PyAV, for AVBERT's processors.

Why this module exists: transformers decodes videos through torchcodec, which fails on or returns other frames for
some real files (``benchmarks/bench_decoding.py``, docs/processing.md). AVBERT needs the old torchvision ``read_video``
semantics that the original code and the parity fixtures use (index ``i`` is the ``i``-th decoded frame, RGB uint8,
clamped indices repeat frames), but without decoding the whole file once per clip.

How frames are found (``read_frames`` / ``read_video``):

1. One demux pass over the video packets (no decoding) builds a frame table: the sorted presentation timestamps
   (pts) of all frames and which of them are keyframes. The rank of a frame's pts in that table is its decode-order
   index, exactly, for any frame rate, variable frame rate and stream start offset (a ``round(pts * fps)`` rule would
   be wrong for VFR).
2. The wanted indices are sorted and deduplicated. For each, the decoder keeps going forward unless the wanted
   frame's keyframe lies more than ``_FRAMES_A_SEEK_MUST_SKIP`` (120) frames ahead, in which case it seeks there: a
   seek restarts the decoder, which costs more than decoding a short stretch, and on 10-20 s clips the sampled frames
   leave no long stretch to skip, while on long videos seeking skips most of the file (``bench_decoding.py``). Only
   wanted frames are converted to RGB.
3. Every decoded frame is checked against the table: its pts must be there, ranks must follow one another, and after a
   seek the first frame at or past the sought keyframe must be a keyframe at or before the target (MPEG-TS, for one,
   lands past its target; a container that cannot seek at all, such as a raw H.264 stream, raises). Any surprise
   switches to a sequential decode from a freshly opened container, which is always correct. Streams known to drop
   or reorder frames (MPEG-4 part 2 with packed B-frames / not-coded VOPs, typical for DivX AVIs), or with missing or
   duplicate pts, use the sequential decode directly.

The sound is read apart, by one decoding pass over the first audio stream (:class:`AudioTrack`): ``read_windows``
keeps only the samples under the clips (what the processor needs), ``read_audio`` keeps them all (audio files).

Decisions that differ from old torchvision (documented for users of the parity fixtures):

- Frames are returned in decode (display) order. Old torchvision sorted frames by pts; on DivX AVIs with packed
  B-frames, FFmpeg 8 labels frames with out-of-order pts although it outputs them in display order, so sorting by pts
  would scramble the video. For ordinary files both orders are the same (the fixture video is bit-exact).
- Indices past the last decodable frame are clamped to the last decoded frame (the original clamps to ``Tv - 1``; the
  difference only shows where a container lists more frames than can be decoded).
- ``num_frames`` is the number of frames in the frame table (one per non-empty packet) when the table is reliable,
  otherwise the container's count. Some AVIs list one frame more than they decode; that index is then clamped.
- Rotation metadata (the display matrix) is applied, in multiples of 90 degrees; flips in the matrix are ignored.
  Old torchvision ignored rotation.
- Any failure is a :class:`MediaDecodeError` naming the file; no other exception type leaves the public functions.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO

import av
import numpy as np

__all__ = [
    "AudioStreamInfo",
    "AudioTrack",
    "DecodedVideo",
    "MediaDecodeError",
    "MediaInfo",
    "VideoStreamInfo",
    "as_media_source",
    "probe",
    "read_audio",
    "read_frames",
    "read_video",
]

MediaSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO
FrameIndices = Sequence[int] | np.ndarray
FrameTransform = Callable[[np.ndarray], np.ndarray]

# MPEG-4 part 2 family: "not coded" VOPs decode to no frame and DivX packs B-frames two to a packet, so packets do not
# map one-to-one to frames. Placeholder packets are at most this many bytes.
_FRAME_DROPPING_CODECS = frozenset({"mpeg4", "msmpeg4v1", "msmpeg4v2", "msmpeg4v3", "h263", "h263p", "flv1"})
_PLACEHOLDER_PACKET_BYTES = 8
# A container that lists more frames than it holds packets for, beyond this slack, may be a truncated file.
_TRUNCATION_SLACK_FRAMES = 2
# A stream whose last packet ends this much (seconds, or this fraction of the extent if more) before the extent its
# header declares is truncated. The slack absorbs rounded timestamps (Matroska stores milliseconds) and last-frame
# durations that muxers estimate.
_TRUNCATION_SLACK_SECONDS = 1.0
_TRUNCATION_SLACK_FRACTION = 0.05
# No real video shows frames for less than this on average (1000 frames a second); frame timestamps that close, or
# audio timestamps that advance at under half the pace of the samples, do not mean what the time base says (e.g. a
# Matroska file whose TimecodeScale claims nanoseconds for millisecond timestamps): placing clips or sound windows by
# them would put every window at 0 s.
_SHORTEST_MEAN_FRAME_SECONDS = 1e-3
_SLOWEST_AUDIO_CLOCK = 0.5
_AUDIO_CLOCK_CHECK_FRAMES = 8
# A seek restarts the decoder at a keyframe; for targets nearer than this, decoding on was as fast or faster in
# bench_decoding.py's reader table (seeking at every keyframe ahead was up to 1.7x slower on 10-20 s clips).
_FRAMES_A_SEEK_MUST_SKIP = 120
# FFmpeg renders text files (its "tty" demuxer) and some text-art formats as video; they hold no video to classify.
_TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})


class MediaDecodeError(ValueError):
    """A media file could not be opened or decoded. The message names the file and the problem."""

    def __init__(self, source_name: str, problem: str) -> None:
        super().__init__(f"{source_name}: {problem}")
        self.source_name = source_name
        self.problem = problem

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # DataLoader workers pickle exceptions; the default reduce would call __init__ with one argument.
        return (type(self), (self.source_name, self.problem))


@dataclass
class VideoStreamInfo:
    """Facts about the first video stream.

    ``width``/``height`` are those of the frames ``read_frames`` returns, i.e. after applying ``rotation``
    (counter-clockwise degrees in (-180, 180]). ``num_frames``: from ``probe``, the container's count, or the number of
    packets when the container reports none; from ``read_video``, the frames of the frame table (what
    decodes, e.g. without packets an edit list discards) when it is reliable.
    """

    fps: float
    num_frames: int
    duration: float
    start_time: float
    width: int
    height: int
    rotation: int = 0


@dataclass
class AudioStreamInfo:
    """Facts about the first audio stream. ``start_time`` is in seconds on the same clock as the video's."""

    sample_rate: int
    channels: int
    duration: float
    start_time: float


@dataclass
class MediaInfo:
    """What ``probe`` reports: the source's name and its first video and audio streams (``None`` when absent)."""

    source: str
    video: VideoStreamInfo | None
    audio: AudioStreamInfo | None


@dataclass
class DecodedVideo:
    """Result of :func:`read_video`.

    ``frames`` is ``(len(indices), H, W, 3)`` uint8 RGB in the requested order (after ``frame_transform`` if one was
    given), ``indices`` the indices actually used (after clamping). ``frames_decoded`` counts the video frames the
    decoder produced, to measure what seeking saved. ``frame_times`` is the presentation time in seconds of every frame
    (index ``i`` -> ``frame_times[i]``), exact for variable frame rates; ``None`` when the stream's timestamps cannot
    be trusted (then ``i / fps`` is the estimate).
    """

    info: MediaInfo
    frames: np.ndarray
    indices: np.ndarray
    frames_decoded: int = 0
    frame_times: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Opening sources


def is_media_source(value: Any) -> bool:
    """A path, encoded bytes, a binary file object or a ``datasets`` video value: something to decode, as opposed to
    decoded frames."""
    value = as_media_source(value)
    return isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(value, "read")


def reopenable(source: MediaSource) -> MediaSource:
    """``source`` in a form that can be read more than once (frames, then sound): an unseekable file object is read
    into memory, keeping its name for error messages; anything else is returned as it is."""
    source = as_media_source(source)
    if not hasattr(source, "read"):
        return source
    name = _source_name(source)
    try:
        if getattr(source, "seekable", lambda: False)():
            return source
        file = io.BytesIO(source.read())
    except (OSError, ValueError) as error:
        raise MediaDecodeError(name, f"cannot read the file object: {error}") from error
    file.name = name
    return file


def as_media_source(value: Any) -> Any:
    """The file behind a value of ``datasets``' ``Video`` feature; any other value unchanged.

    ``Video()`` rows hold a torchcodec ``VideoDecoder`` that remembers what it was made from (``_hf_encoded``, the
    ``{"bytes", "path"}`` dict that ``Video(decode=False)`` rows hold as they are). The file itself is decoded
    here (frames and sound), not that decoder, which has no sound.
    """
    encoded = getattr(value, "_hf_encoded", None)
    if isinstance(encoded, dict):
        value = encoded
    if isinstance(value, dict) and {"bytes", "path"} >= set(value) and value:
        if value.get("bytes") is not None:
            if value.get("path") is None:
                return value["bytes"]
            file = io.BytesIO(value["bytes"])
            file.name = os.fspath(value["path"])  # errors name the file, not "<bytes>"
            return file
        if value.get("path") is not None:
            return value["path"]
        raise MediaDecodeError("<datasets video>", "the value holds neither bytes nor a path")
    if type(value).__module__.startswith("torchcodec."):
        problem = "a VideoDecoder not made by `datasets` does not say which file it reads; pass the file"
        raise MediaDecodeError("<torchcodec decoder>", problem)
    return value


@contextlib.contextmanager
def out_of_memory_names(source: Any) -> Iterator[None]:
    """Allocation failures in the block (``MemoryError``, numpy's, torch's allocator ``RuntimeError``) become a
    :class:`MediaDecodeError` that names ``source``: under a memory limit a bad or huge file is one the batch tools
    skip and report, not a crash without a name."""
    try:
        yield
    except MemoryError as error:
        raise MediaDecodeError(_source_name(source), f"out of memory while decoding: {error}") from error
    except RuntimeError as error:
        if "alloc" not in str(error).lower():
            raise
        raise MediaDecodeError(_source_name(source), f"out of memory while decoding: {error}") from error


def _source_name(source: Any) -> str:
    if isinstance(source, list | tuple):
        return ", ".join(_source_name(item) for item in source)
    source = as_media_source(source)
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<file object>"


class _OffsetFile(io.RawIOBase):
    """The part of a seekable file object from a given offset on, seen as a whole file: FFmpeg seeks to absolute
    positions, which must not land in whatever precedes the media in the user's file."""

    def __init__(self, file: BinaryIO, start: int) -> None:
        super().__init__()
        self._file, self._start = file, start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            offset += self._start
        return self._file.seek(offset, whence) - self._start

    def tell(self) -> int:
        return self._file.tell() - self._start


class _Source:
    """A media source that can be opened more than once: a sequential re-decode needs a fresh demuxer, because not
    every container can seek back to its start (raw H.264 cannot; MPEG-TS lands past it).

    File objects are read from their current position, which ``restore`` puts back so that ``probe`` and
    ``read_frames`` can be called on the same object. Unseekable ones are read into memory (``reopenable``).
    """

    def __init__(self, source: MediaSource) -> None:
        source = reopenable(source)
        self.name = _source_name(source)
        self.path: str | None = None
        self.file: Any = None
        self.start = 0
        self.user_file: Any = None
        if isinstance(source, (str, os.PathLike)):
            self.path = os.fspath(source)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            # A memoryview may be non-contiguous, which BytesIO refuses; tobytes() copies it into order.
            self.file = io.BytesIO(source.tobytes() if isinstance(source, memoryview) else source)
        elif hasattr(source, "read"):
            try:
                self.user_file, self.start = source, source.tell()
            except (OSError, ValueError) as error:
                raise MediaDecodeError(self.name, f"cannot read the file object: {error}") from error
            self.file = _OffsetFile(source, self.start) if self.start else source
        else:
            raise MediaDecodeError(self.name, f"unsupported source type {type(source).__name__}")

    def open(self) -> av.container.InputContainer:
        try:
            if self.file is not None:
                self.file.seek(0)
            return av.open(self.path if self.path is not None else self.file, mode="r", metadata_errors="ignore")
        except Exception as error:
            raise MediaDecodeError(self.name, f"cannot open as media: {error}") from error

    def restore(self) -> None:
        if self.user_file is not None:
            with contextlib.suppress(OSError, ValueError):
                self.user_file.seek(self.start)


@contextlib.contextmanager
def _open(source: MediaSource) -> Iterator[tuple[av.container.InputContainer, _Source]]:
    """Open ``source``; every failure inside the block becomes a MediaDecodeError that names it."""
    media = source if isinstance(source, _Source) else _Source(source)
    try:
        with contextlib.closing(media.open()) as container:
            try:
                yield container, media
            except MediaDecodeError:
                raise
            except Exception as error:
                raise MediaDecodeError(media.name, f"decoding failed: {type(error).__name__}: {error}") from error
    finally:
        media.restore()


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first video stream that is not a still picture (cover art of an audio file is not a video) or text."""
    for stream in container.streams.video:
        still = stream.disposition & av.stream.Disposition.attached_pic
        if not still and stream.codec_context.name not in _TEXT_CODECS:
            return stream
    return None


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream | None:
    return container.streams.audio[0] if container.streams.audio else None


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


# ---------------------------------------------------------------------------------------------------------------------
# Stream facts


def _stream_fps(stream: av.video.stream.VideoStream, num_frames: int, duration: float) -> float:
    """average_rate (what old torchvision reported), else guessed_rate, else frames / duration; 0.0 if unknown."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and rate > 0:
            return float(rate)
    if num_frames > 0 and duration > 0:
        return num_frames / duration
    return 0.0


def _stream_duration(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    duration = _seconds(stream.duration, stream.time_base)
    if duration is None and container.duration is not None:
        duration = container.duration / av.time_base
    return float(duration or 0.0)


def _first_frame_and_packet_count(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, count: bool
) -> tuple[av.VideoFrame | None, int]:
    """Decode the first frame and, if asked, count the packets: one forward pass, no seeking."""
    first, packets = None, 0
    for packet in container.demux(stream):
        packets += packet.size > 0
        if first is None:
            first = next(iter(packet.decode()), None)
        if first is not None and not count:
            break
    return first, packets


def _rotation_degrees(frame: av.VideoFrame) -> int:
    """The frame's display-matrix rotation, counter-clockwise, in (-180, 180]; 0 without (or with a singular) one."""
    rotation = frame.rotation
    if rotation is None or not np.isfinite(rotation):
        return 0
    degrees = round(rotation) % 360
    return degrees - 360 if degrees > 180 else degrees


def _rotation_quarters(degrees: int) -> int:
    """Counter-clockwise quarter turns for a rotation, rounded to 90 degrees (flips in the matrix are ignored)."""
    return round(degrees / 90.0) % 4


def _video_info(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    num_frames: int,
    rotation: int,
) -> VideoStreamInfo:
    duration = _stream_duration(container, stream)
    fps = _stream_fps(stream, num_frames, duration)
    if duration <= 0 and fps > 0:
        duration = num_frames / fps
    width, height = stream.codec_context.width, stream.codec_context.height
    if _rotation_quarters(rotation) % 2:
        width, height = height, width
    return VideoStreamInfo(
        fps=fps,
        num_frames=num_frames,
        duration=duration,
        start_time=_seconds(stream.start_time, stream.time_base) or 0.0,
        width=width,
        height=height,
        rotation=rotation,
    )


def _audio_info(container: av.container.InputContainer) -> AudioStreamInfo | None:
    stream = _audio_stream(container)
    if stream is None:
        return None
    return AudioStreamInfo(
        sample_rate=int(stream.codec_context.sample_rate or stream.rate or 0),
        channels=int(stream.codec_context.channels),
        duration=_stream_duration(container, stream),
        start_time=_seconds(stream.start_time, stream.time_base) or 0.0,
    )


def probe(source: MediaSource) -> MediaInfo:
    """Describe the first video and audio streams of ``source`` (a path, bytes or a binary file object).

    Cheap: it reads the header and decodes the first frame for its rotation (FFmpeg attaches the display matrix to
    decoded frames, not to the stream); it demuxes the whole stream only when the container reports no frame count.
    """
    with _open(source) as (container, media):
        video = _video_stream(container)
        video_info = None
        if video is not None:
            first, packets = _first_frame_and_packet_count(container, video, count=not video.frames)
            rotation = _rotation_degrees(first) if first is not None else 0
            video_info = _video_info(container, video, int(video.frames) or packets, rotation)
        return MediaInfo(source=media.name, video=video_info, audio=_audio_info(container))


# ---------------------------------------------------------------------------------------------------------------------
# Audio


def _to_float32(samples: np.ndarray) -> np.ndarray:
    """Integer PCM to float in [-1, 1): int16 / 32768 is what the fixtures (soundfile, torchaudio 0.6) produce."""
    if samples.dtype == np.float32:
        return samples
    if np.issubdtype(samples.dtype, np.floating):
        return samples.astype(np.float32)
    if samples.dtype == np.uint8:
        return ((samples.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    scale = float(2 ** (8 * samples.dtype.itemsize - 1))
    return (samples.astype(np.float64) / scale).astype(np.float32)


def _audio_frame_samples(frame: av.AudioFrame) -> np.ndarray:
    """(channels, samples) float32 from a planar or packed frame (packed ones come out as (1, samples * channels)).

    The samples of a mono or packed float frame are a read-only view of the frame's plane: ``to_ndarray`` stacks the
    planes into a copy, which costs as much as the rest of the per-frame work (hundreds of frames a clip sample).
    """
    dtype = av.audio.frame.format_dtypes.get(frame.format.name)  # PyAV's own table, what to_ndarray reads with
    if dtype is not None and len(frame.planes) == 1:
        count = frame.samples * (1 if frame.format.is_planar else frame.layout.nb_channels)
        data = np.frombuffer(frame.planes[0], dtype=dtype, count=count)[None]
    else:
        data = frame.to_ndarray()
    if not frame.format.is_planar:
        data = data.reshape(-1, frame.layout.nb_channels).T
    return _to_float32(data)


def read_audio(source: MediaSource) -> tuple[np.ndarray, int]:
    """The whole first audio stream as float32 ``(channels, samples)`` and its sample rate.

    Float formats are passed through unchanged (lossy codecs may overshoot 1.0 slightly, as in the original);
    integer PCM is scaled to [-1, 1).
    """
    track = AudioTrack(source)
    return np.concatenate(list(track.chunks()), axis=1), track.sample_rate


class AudioTrack:
    """The first audio stream of a file, read in windows: memory is bounded by the windows, not the file's length.

    ``sample_rate``, ``channels`` and ``start_time`` (seconds, on the video's clock) are those of the first decoded
    frame. ``read_windows`` decodes the stream once from the start and keeps only the samples inside the windows,
    counted from the first sample exactly as :func:`read_audio` counts them (bit-identical slices; seeking instead
    would place frames by timestamps, which Matroska rounds to milliseconds). ``num_samples`` costs one more decoding
    pass, made only when asked (the original's "fraction" alignment needs the track's length).
    """

    def __init__(self, source: MediaSource) -> None:
        self._media = _Source(source)
        self.name = self._media.name
        self._num_samples: int | None = None
        frames = self._frames()
        try:
            head = list(itertools.islice(frames, _AUDIO_CLOCK_CHECK_FRAMES))
            if not head:
                raise MediaDecodeError(self.name, "the audio stream holds no decodable samples")
            first = head[0]
            self.sample_rate = int(first[0].sample_rate)
            self.channels = first[1].shape[0]
            self.start_time = _seconds(first[0].pts, first[0].time_base) or 0.0
            self._check_clock(head)
        except BaseException:
            frames.close()
            raise
        # The first pass goes on from the frames decoded here, in the same container: opening it again and decoding
        # the head again would cost about as much as decoding the sound under a clip.
        self._started: tuple[list[tuple[av.AudioFrame, np.ndarray]], Iterator] | None = (head, frames)

    def _check_clock(self, head: list[tuple[av.AudioFrame, np.ndarray]]) -> None:
        """Refuse timestamps that advance at under half the pace of the samples over the first frames: they do not
        mean what the time base says, and windows placed by them would all start at 0 s. (Faster is legitimate: a
        gap in the sound.)"""
        timed = [(frame.pts * frame.time_base, samples.shape[1]) for frame, samples in head if frame.pts is not None]
        if len(timed) < 2 or head[0][0].time_base is None:
            return
        by_timestamps = float(timed[-1][0] - timed[0][0])
        by_samples = sum(count for _, count in timed[:-1]) / self.sample_rate
        if by_timestamps < _SLOWEST_AUDIO_CLOCK * by_samples:
            raise MediaDecodeError(
                self.name,
                f"inconsistent timestamps: the audio timestamps advance {by_timestamps:.3g} s over {by_samples:.3g} s "
                f"of samples at the time base {head[0][0].time_base}; the sound cannot be placed in time",
            )

    def _frames(self) -> Iterator[tuple[av.AudioFrame, np.ndarray]]:
        """Every decoded frame and its samples, from a freshly opened container (a clean decoder state)."""
        with _open(self._media) as (container, _):
            stream = _audio_stream(container)
            if stream is None:
                raise MediaDecodeError(self.name, "no audio stream")
            for frame in container.decode(stream):
                yield frame, _audio_frame_samples(frame)

    def _frames_from_start(self) -> Iterator[tuple[av.AudioFrame, np.ndarray]]:
        """Every decoded frame and its samples: the first pass continues the one ``__init__`` started (the same
        frames, from the same decoder), later ones decode anew."""
        if self._started is None:
            yield from self._frames()
            return
        head, rest = self._started
        self._started = None
        try:
            yield from head
            yield from rest
        finally:
            rest.close()

    def chunks(self) -> Iterator[np.ndarray]:
        """The samples of every decoded frame in order, float32 ``(channels, samples)`` (read-only); the sample rate
        and the channel layout must not change mid-stream."""
        for frame, samples in self._frames_from_start():
            if frame.sample_rate != self.sample_rate or samples.shape[0] != self.channels:
                raise MediaDecodeError(self.name, "the audio sample rate or channel layout changes mid-stream")
            yield samples

    @property
    def num_samples(self) -> int:
        if self._num_samples is None:
            self._num_samples = sum(samples.shape[1] for _, samples in self._frames_from_start())
        return self._num_samples

    def read_windows(self, windows: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Samples ``[start, stop)`` of each window, float32 ``(channels, samples)``: cut short where the stream ends
        (what a slice of the whole waveform gives; a window past the end holds one silent sample)."""
        # The samples go into the disjoint spans the windows cover (one copy per decoded frame, not one per window),
        # which the windows are then cut from.
        spans = _covering_spans(windows)
        buffers = [np.zeros((self.channels, stop - start), dtype=np.float32) for start, stop in spans]
        last = max((stop for _, stop in windows), default=0)
        position, first_span = 0, 0
        with contextlib.closing(self.chunks()) as chunks:
            for samples in chunks:
                end = position + samples.shape[1]
                while first_span < len(spans) and spans[first_span][1] <= position:
                    first_span += 1
                for (start, stop), buffer in zip(spans[first_span:], buffers[first_span:], strict=True):
                    if start >= end:
                        break
                    low, high = max(position, start), min(end, stop)
                    buffer[:, low - start : high - start] = samples[:, low - position : high - position]
                position = end
                if position >= last:
                    break
        span_starts = [start for start, _ in spans]
        out = []
        for start, stop in windows:
            if stop <= start:
                out.append(np.zeros((self.channels, 0), dtype=np.float32))
                continue
            span = bisect.bisect_right(span_starts, start) - 1
            offset = start - span_starts[span]
            out.append(buffers[span][:, offset : offset + stop - start].copy())
        if position < last:
            self._num_samples = position  # the stream ended: its length is known
            out = [window[:, : max(position - start, 1)] for (start, _), window in zip(windows, out, strict=True)]
        return out


def _covering_spans(windows: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The sorted, disjoint ``[start, stop)`` spans that the non-empty windows cover together."""
    spans: list[tuple[int, int]] = []
    for start, stop in sorted((start, stop) for start, stop in windows if stop > start):
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], stop))
        else:
            spans.append((start, stop))
    return spans


# ---------------------------------------------------------------------------------------------------------------------
# Video


class _UnreliableSeek(Exception):
    """The decoder disagreed with the frame table; the caller falls back to a sequential decode."""


@dataclass
class _FrameTable:
    """Sorted pts of every frame, keyframe ranks, and whether ranks can be trusted for seeking.

    ``num_packets`` also counts packets an edit list discards (they decode to no frame), for the truncation check.
    """

    pts: np.ndarray
    keyframe_ranks: np.ndarray
    reliable: bool
    num_packets: int
    end_pts: int | None = None  # the largest pts, reliable or not (for the truncation check)

    def rank(self, pts: int | None) -> int | None:
        if pts is None:
            return None
        position = int(np.searchsorted(self.pts, pts))
        return position if position < len(self.pts) and self.pts[position] == pts else None

    def keyframe_at_or_before(self, index: int) -> int:
        position = int(np.searchsorted(self.keyframe_ranks, index, side="right")) - 1
        return int(self.keyframe_ranks[position]) if position >= 0 else 0


def _build_frame_table(container: av.container.InputContainer, video: av.video.stream.VideoStream) -> _FrameTable:
    """Demux once, decoding nothing: collect the video packets' pts and keyframe flags."""
    pts: list[int | None] = []
    keyframes: list[bool] = []
    smallest_packet = None
    num_packets = 0
    for packet in container.demux(video):
        num_packets += packet.size > 0
        if packet.size > 0 and not packet.is_discard:
            pts.append(packet.pts)
            keyframes.append(packet.is_keyframe)
            smallest_packet = packet.size if smallest_packet is None else min(smallest_packet, packet.size)
    has_all_pts = all(value is not None for value in pts)
    values = np.asarray([value for value in pts if value is not None], dtype=np.int64)
    order = np.argsort(values, kind="stable")
    sorted_pts = values[order]
    frame_dropping = (
        video.codec_context.name in _FRAME_DROPPING_CODECS
        and smallest_packet is not None
        and smallest_packet <= _PLACEHOLDER_PACKET_BYTES
    )
    reliable = has_all_pts and not frame_dropping and bool(np.all(np.diff(sorted_pts) > 0))
    key_ranks = np.flatnonzero(np.asarray(keyframes, dtype=bool)[order]) if reliable else np.zeros(0, np.int64)
    end_pts = int(sorted_pts[-1]) if len(sorted_pts) else None
    if not reliable:
        sorted_pts = np.arange(len(pts), dtype=np.int64)  # only the count is meaningful
    return _FrameTable(sorted_pts, key_ranks, reliable, num_packets, end_pts)


class _FrameReader:
    """Decodes the wanted frames of one video stream, seeking when a keyframe lies ahead (see the module docstring)."""

    def __init__(self, media: _Source, table: _FrameTable, transform: FrameTransform | None) -> None:
        self.media = media
        self.table = table
        self.transform = transform
        self.shape: tuple[int, int] | None = None
        self.rotation = 0
        self.last: tuple[int, av.VideoFrame] | None = None
        self.sought: int | None = None  # rank of the keyframe of the last seek, until a frame reaches it
        self.frames_decoded = 0
        # One swscale context for the whole video (``to_ndarray(format=...)`` sets one up per frame), on one thread:
        # a DataLoader worker has one core.
        self.reformatter = av.video.reformatter.VideoReformatter()

    def convert(self, frame: av.VideoFrame) -> np.ndarray:
        """RGB uint8, display-rotated, transformed. Mid-stream size changes are scaled to the first frame's size."""
        if self.shape is None:
            self.shape = (frame.width, frame.height)
            self.rotation = _rotation_degrees(frame)
        width, height = self.shape
        rgb = self.reformatter.reformat(frame, width, height, "rgb24", threads=1).to_ndarray()
        quarters = _rotation_quarters(_rotation_degrees(frame))
        if quarters:
            rgb = np.ascontiguousarray(np.rot90(rgb, quarters))
        return self.transform(rgb) if self.transform is not None else rgb

    def read(self, wanted: np.ndarray, demuxed: av.container.InputContainer) -> dict[int, np.ndarray]:
        """Frames for the sorted unique ``wanted`` indices; ones past the end map to the last decoded frame.

        Decoding first goes on in ``demuxed``, the container of the demux pass, sought back to its first frame: an
        open costs as much as decoding a dozen small frames. The first decoded frame must then be the table's first,
        as from a fresh start. Where that seek fails or the decoder disagrees, a freshly opened container is used,
        since going back to the start by reopening works for every container, where seeking there does not.
        """
        if self.table.reliable:
            try:
                return self._read(self._rewind(demuxed), wanted, seek=True)
            except _UnreliableSeek:
                self.last, self.sought = None, None
            try:
                with contextlib.closing(self.media.open()) as container:
                    return self._read(container, wanted, seek=True)
            except _UnreliableSeek:
                self.last = None
        with contextlib.closing(self.media.open()) as container:
            return self._read(container, wanted, seek=False)

    def _rewind(self, container: av.container.InputContainer) -> av.container.InputContainer:
        """``container`` sought back to the table's first frame. ``sought`` stays unset, so ``_checked_rank`` accepts
        only rank 0 as the first decoded frame, the frame a fresh decode starts with."""
        try:
            container.seek(int(self.table.pts[0]), backward=True, any_frame=False, stream=_video_stream(container))
        except av.error.FFmpegError as error:
            raise _UnreliableSeek from error
        return container

    def _read(self, container: av.container.InputContainer, wanted: np.ndarray, seek: bool) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        wanted_set = {int(index) for index in wanted}
        stream = _video_stream(container)
        frames: Iterator[av.VideoFrame] | None = None
        next_rank: int | None = None
        for target in (int(index) for index in wanted):
            if target in found:
                continue
            keyframe = self.table.keyframe_at_or_before(target) if seek else 0
            worth_a_seek = keyframe - (next_rank or 0) > _FRAMES_A_SEEK_MUST_SKIP
            if frames is None or worth_a_seek:
                frames = self._seek(container, stream, keyframe) if worth_a_seek else iter(container.decode(stream))
                next_rank = None
            next_rank = self._decode_until(frames, target, next_rank, wanted_set, found, use_pts=seek)
            if next_rank is None:
                break
        self._fill_past_end(wanted, found)
        return found

    def _seek(
        self, container: av.container.InputContainer, stream: av.video.stream.VideoStream, rank: int
    ) -> Iterator[av.VideoFrame]:
        """Seek backward to the keyframe of the given rank."""
        try:
            container.seek(int(self.table.pts[rank]), backward=True, any_frame=False, stream=stream)
        except av.error.FFmpegError as error:
            raise _UnreliableSeek from error
        self.sought = rank
        return iter(container.decode(stream))

    def _decode_until(
        self,
        frames: Iterator[av.VideoFrame],
        target: int,
        next_rank: int | None,
        wanted: set[int],
        found: dict[int, np.ndarray],
        use_pts: bool,
    ) -> int | None:
        """Decode until the frame of rank ``target``; return the next rank, or None at the end of the stream.

        With ``use_pts`` a frame's rank comes from the table (checked by ``_checked_rank``); without it, ranks count
        decoded frames from the start.
        """
        for frame in frames:
            self.frames_decoded += 1
            rank = self._checked_rank(frame, target, next_rank) if use_pts else (next_rank or 0)
            self.last = (rank, frame)
            next_rank = rank + 1
            if rank in wanted and rank not in found:
                found[rank] = self.convert(frame)
            if rank >= target:
                return next_rank
        return None

    def _checked_rank(self, frame: av.VideoFrame, target: int, next_rank: int | None) -> int:
        """The frame's rank, if the decoder agrees with the table: the pts is known, ranks follow one another from 0
        (decoding from the start) and the first frame at or past a seek's keyframe is a keyframe no later than the
        target. Otherwise ranks would not be decode-order indices: the caller decodes sequentially instead."""
        rank = self.table.rank(frame.pts)
        if rank is None or next_rank not in (None, rank):
            raise _UnreliableSeek
        if next_rank is None and self.sought is None and rank != 0:
            raise _UnreliableSeek
        if self.sought is not None and rank >= self.sought:
            if rank > target or not frame.key_frame:
                raise _UnreliableSeek
            self.sought = None
        return rank

    def _fill_past_end(self, wanted: np.ndarray, found: dict[int, np.ndarray]) -> None:
        missing = [int(index) for index in wanted if int(index) not in found]
        if not missing:
            return
        if self.last is None:
            raise _NoFrames
        last_rank, last_frame = self.last
        last = found.get(last_rank)
        if last is None:
            last = self.convert(last_frame)
        for index in missing:
            found[index] = last


class _NoFrames(Exception):
    """The video stream produced no frame at all."""


def _as_index_array(indices: FrameIndices, name: str) -> np.ndarray:
    array = np.asarray(indices)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or np.all(np.mod(array, 1) == 0)):
        raise MediaDecodeError(name, f"frame indices must be a 1-D sequence of integers, got shape {array.shape}")
    array = array.astype(np.int64)
    if array.min() < 0:
        raise MediaDecodeError(name, f"frame indices must be non-negative, got {int(array.min())}")
    return array


def _check_not_truncated(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, table: _FrameTable, media: _Source
) -> None:
    """Refuse a file that holds less of its video stream than its header declares.

    The video stream is judged against its own declared extent, never against the container's duration, which is
    that of the longest stream (a sound track longer than the video, or a video that starts late, is not truncation):

    - by count where the container lists one (MP4, AVI); a short count is forgiven when the frames still reach the
      time the listed frames span at the stream's rate, as in a variable-frame-rate AVI, which lists the frames the
      encoder dropped (stored as empty chunks the demuxer skips);
    - else by the stream's own end as Matroska / WebM muxers write it (the track's ``DURATION`` tag);
    - else, the container's duration being the longest stream's, by whether any audio or video stream reaches it.
    """
    name = media.name
    listed = int(stream.frames)
    ends = _video_end_seconds(stream, table)
    if listed > 0:
        if table.num_packets >= listed - _TRUNCATION_SLACK_FRAMES:
            return
        # The listed frames at the header's rate: the stream's declared extent. (A damaged AVI's stream duration is
        # FFmpeg's estimate from what is present, not what its header declares.)
        rate = _stream_fps(stream, listed, 0.0)
        start = _seconds(stream.start_time, stream.time_base) or 0.0
        if rate <= 0 or ends is None or _ends_short(ends, start + listed / rate):
            raise MediaDecodeError(
                name, f"truncated or corrupt: the container lists {listed} frames, {table.num_packets} are present"
            )
        return
    if ends is None:
        return
    declared_end = _matroska_track_end(stream)
    if declared_end is not None:
        if _ends_short(ends, declared_end):
            raise MediaDecodeError(
                name,
                f"truncated or corrupt: the video track declares it ends at {declared_end:.2f} s, "
                f"its frames end at {ends:.2f} s",
            )
        return
    if container.duration is None or container.duration <= 0:
        return
    # Matroska's duration runs from time 0 (the end of the last stream); for a container that measures it from its
    # start time instead, this end is earlier, i.e. more lenient.
    container_end = container.duration / av.time_base
    if not _ends_short(ends, container_end):
        return
    ends = max(ends, _audio_end_seconds(media))
    if _ends_short(ends, container_end):
        raise MediaDecodeError(
            name, f"truncated or corrupt: the container declares {container_end:.2f} s, its streams end at {ends:.2f} s"
        )


def _check_timestamps(stream: av.video.stream.VideoStream, table: _FrameTable, name: str) -> None:
    """Refuse frame timestamps that cannot be what the time base says: over 1000 frames a second on average."""
    if not table.reliable or len(table.pts) < 2 or stream.time_base is None:
        return
    span = float((int(table.pts[-1]) - int(table.pts[0])) * stream.time_base)
    if span < _SHORTEST_MEAN_FRAME_SECONDS * (len(table.pts) - 1):
        raise MediaDecodeError(
            name,
            f"inconsistent timestamps: {len(table.pts)} frames within {span:.3g} s at the video's time base "
            f"{stream.time_base}; the timestamps do not match it, so frames cannot be placed in time",
        )


def _ends_short(ends: float, declared_end: float) -> bool:
    return ends < declared_end - max(_TRUNCATION_SLACK_SECONDS, _TRUNCATION_SLACK_FRACTION * declared_end)


def _video_end_seconds(stream: av.video.stream.VideoStream, table: _FrameTable) -> float | None:
    """When the last frame of the table ends, in seconds on the file's clock (``None`` without timestamps)."""
    if table.end_pts is None or stream.time_base is None:
        return None
    rate = _stream_fps(stream, table.num_packets, 0.0)
    return float(table.end_pts * stream.time_base) + (1 / rate if rate > 0 else 0.0)


def _matroska_track_end(stream: av.stream.Stream) -> float | None:
    """The track's ``DURATION`` tag (``HH:MM:SS.fraction``), which FFmpeg's Matroska muxer writes as the end of the
    track's last frame on the file's clock (a muxer that counts it from the track's start makes the check more
    lenient, never stricter); ``None`` when absent or unreadable."""
    value = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if not value:
        return None
    try:
        hours, minutes, seconds = value.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _audio_end_seconds(media: _Source) -> float:
    """When the first audio stream's last packet ends (seconds on the file's clock; 0 without audio): one more demux
    pass, made only for a video stream that ends early in a container that declares no per-stream extent."""
    end = 0.0
    with contextlib.closing(media.open()) as container:
        audio = _audio_stream(container)
        if audio is None or audio.time_base is None:
            return end
        for packet in container.demux(audio):
            if packet.pts is not None and packet.size > 0:
                end = max(end, float((packet.pts + (packet.duration or 0)) * audio.time_base))
    return end


def read_video(
    source: MediaSource,
    indices: FrameIndices | Callable[[VideoStreamInfo], FrameIndices],
    frame_transform: FrameTransform | None = None,
) -> DecodedVideo:
    """Decode the frames at ``indices`` of the first video stream (the sound is :class:`AudioTrack`'s).

    ``indices`` may be a callable that receives the :class:`VideoStreamInfo` (with the exact frame count of the frame
    table) and returns the indices: clip sampling needs the count before it can choose frames, and this way the file
    is still demuxed only once. ``frame_transform`` is applied to each unique decoded RGB frame before it is kept (e.g.
    a resize), which bounds memory for high-resolution sources.
    """
    with _open(source) as (container, media):
        name = media.name
        video = _video_stream(container)
        if video is None:
            raise MediaDecodeError(name, "no video stream")
        table = _build_frame_table(container, video)
        _check_timestamps(video, table, name)
        _check_not_truncated(container, video, table, media)
        num_frames = len(table.pts) if table.reliable else max(int(video.frames), len(table.pts))
        if num_frames == 0:
            raise MediaDecodeError(name, "no video frames")
        # The sampler needs the frame count before anything is decoded; the rotation is known after decoding.
        requested = indices(_video_info(container, video, num_frames, rotation=0)) if callable(indices) else indices
        wanted = np.minimum(_as_index_array(requested, name), num_frames - 1)
        reader = _FrameReader(media, table, frame_transform)
        try:
            found = reader.read(np.unique(wanted), container)
        except _NoFrames:
            raise MediaDecodeError(name, "no video frames") from None
        info = MediaInfo(name, _video_info(container, video, num_frames, reader.rotation), _audio_info(container))
        return DecodedVideo(
            info=info,
            frames=_gather(found, wanted, info.video),
            indices=wanted,
            frames_decoded=reader.frames_decoded,
            frame_times=table.pts * float(video.time_base) if table.reliable and video.time_base else None,
        )


def _gather(found: dict[int, np.ndarray], wanted: np.ndarray, video: VideoStreamInfo) -> np.ndarray:
    """The frames of ``wanted`` in order, copied once into one array (stacking then indexing copied them twice)."""
    if len(wanted) == 0:
        return np.zeros((0, video.height, video.width, 3), dtype=np.uint8)
    first = found[int(wanted[0])]
    out = np.empty((len(wanted), *first.shape), dtype=first.dtype)
    for row, index in enumerate(wanted):
        out[row] = found[int(index)]
    return out


def read_frames(source: MediaSource, indices: FrameIndices) -> np.ndarray:
    """uint8 RGB frames ``(len(indices), H, W, 3)`` in the requested order; duplicates allowed.

    Index ``i`` is the ``i``-th decoded frame of the first video stream (old torchvision ``read_video`` semantics).
    Indices past the last decodable frame give the last decoded frame, as the original's clamping does.
    """
    return read_video(source, indices).frames
