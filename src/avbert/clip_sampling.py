"""Clip timing: which frames each clip holds, when each clip starts, and where its sound window lies.

The one place to change how AVBERT samples clips. Everything that needs clip timing (the video processor's
``sample_frames``, the processor's sound windows, the feature extractor's uniform windows, training and benchmarks)
asks a :class:`ClipSampling` or :func:`uniform_starts`; nothing else computes it.

The rules are the original data pipeline's, bit for bit where the parity fixtures check them:

- a clip covers ``num_frames * frame_sampling_rate * round(fps) / target_fps`` source frames (2.133 s at any rate; no
  frame-rate resampling);
- ``num_clips`` clips are spread uniformly: clip ``i`` starts at frame ``delta * i / (num_clips - 1)``,
  ``delta = max(total - span, 0)``; one clip is centred (the original divides by zero there);
- the frames of a clip are ``float32 linspace(start, start + span - 1, num_frames)``, clamped and truncated;
- a clip starts at the presentation time of its start position (interpolated between the frames' times, which is
  right for variable frame rates), and its sound window starts there (``"timestamp"``) or at the same fraction of the
  sound as of the video (``"fraction"``, the original).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["AUDIO_ALIGNMENTS", "DEFAULT_FPS", "ClipSampling", "uniform_starts"]

DEFAULT_FPS = 30.0  # the original's target rate, assumed for frames given without a rate
AUDIO_ALIGNMENTS = ("timestamp", "fraction")
# Frame times within this of index / fps are a constant rate written with rounded timestamps (Matroska stores
# milliseconds): the rate places clips more precisely than the rounded times.
_STEADY_RATE_TOLERANCE_SECONDS = 0.002
# The original computed the "fraction" alignment on the 44.1 kHz waveform, in whole samples.
_FRACTION_RATE = 44100


def uniform_starts(length: float, window: float, count: int) -> list[float]:
    """Starts of ``count`` windows of ``window`` spread over ``length``: ``delta * i / (count - 1)`` with
    ``delta = max(length - window, 0)``, the first at 0 and the last ending at the end; one window is centred."""
    delta = max(length - window, 0)
    if count == 1:
        return [delta / 2]
    return [delta * index / (count - 1) for index in range(count)]


def _frame_rate(fps: float | None) -> float:
    return float(fps) if fps is not None and fps > 0 else DEFAULT_FPS


@dataclass(frozen=True)
class ClipSampling:
    """How the clips of a video are chosen: ``num_clips`` uniformly spaced clips of ``num_frames`` frames, every
    ``frame_sampling_rate``-th at ``target_fps``; ``temporal_index`` keeps only those clips (e.g. one of the original's
    10 test views). ``fps`` below is the source frame rate; ``None`` or non-positive means 30."""

    num_clips: int = 10
    num_frames: int = 32
    frame_sampling_rate: int = 2
    target_fps: float = 30.0
    temporal_index: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for index in self.temporal_index or ():
            if not 0 <= index < self.num_clips:
                raise ValueError(f"temporal_index {index} is outside 0..{self.num_clips - 1}")

    @property
    def clip_seconds(self) -> float:
        """Duration of a clip: ``num_frames * frame_sampling_rate / target_fps`` (64 / 30 s by default)."""
        return self.num_frames * self.frame_sampling_rate / self.target_fps

    @property
    def selected_clips(self) -> list[int]:
        return list(range(self.num_clips)) if self.temporal_index is None else list(self.temporal_index)

    def span(self, fps: float | None) -> float:
        """Source frames covered by one clip (the rate is rounded, as in the original)."""
        return self.num_frames * self.frame_sampling_rate * max(round(_frame_rate(fps)), 1) / self.target_fps

    def start_positions(self, total_frames: int, fps: float | None) -> np.ndarray:
        """Float start position (in frames) of each selected clip."""
        if total_frames < 1:
            raise ValueError(f"a video needs at least one frame, got total_frames={total_frames}")
        starts = uniform_starts(total_frames, self.span(fps), self.num_clips)
        return np.asarray([starts[index] for index in self.selected_clips], dtype=np.float64)

    def frame_indices(self, total_frames: int, fps: float | None) -> np.ndarray:
        """Frame indices ``(clips, num_frames)`` of the selected clips, by the original's rule."""
        span = self.span(fps)
        rows = [
            torch.clamp(torch.linspace(start, start + span - 1, self.num_frames), 0, total_frames - 1).long().numpy()
            for start in self.start_positions(total_frames, fps)
        ]
        return np.stack(rows)

    def start_times(
        self,
        total_frames: int,
        fps: float | None,
        frame_times: np.ndarray | None = None,
        start_time: float = 0.0,
    ) -> np.ndarray:
        """Start time in seconds of each selected clip, on the stream's clock.

        ``frame_times`` (every frame's presentation time) place the clips of a variable-frame-rate video; without them,
        or at a steady rate, it is ``start_time + position / fps``.
        """
        positions = self.start_positions(total_frames, fps)
        if frame_times is not None and len(frame_times) == total_frames:
            steady = np.arange(total_frames) / _frame_rate(fps) + frame_times[0]
            if np.abs(frame_times - steady).max() > _STEADY_RATE_TOLERANCE_SECONDS:
                return np.interp(positions, np.arange(total_frames), frame_times)
        return positions / _frame_rate(fps) + start_time

    def audio_window_starts(
        self,
        total_frames: int,
        fps: float | None,
        *,
        alignment: str,
        window_seconds: float,
        audio_duration: float = 0.0,
        audio_start_time: float = 0.0,
        frame_times: np.ndarray | None = None,
        video_start_time: float = 0.0,
    ) -> np.ndarray:
        """Start of each selected clip's sound window, in seconds from the first audio sample.

        ``"timestamp"``: where the clip starts in time (:meth:`start_times`), so picture and sound coincide even when
        the sound track is shorter or offset. ``"fraction"``: the original's rule, the same fraction of the sound as of
        the video, ``int(delta_a * position / delta_v)`` samples at 44.1 kHz with ``delta_a`` / ``delta_v`` the sound /
        video length less one window / clip (``audio_duration`` is needed); 0 where the original divided by zero.
        """
        if alignment == "timestamp":
            times = self.start_times(total_frames, fps, frame_times, video_start_time)
            return np.maximum(times - audio_start_time, 0.0)
        if alignment != "fraction":
            raise ValueError(f"audio_alignment must be one of {AUDIO_ALIGNMENTS}, got {alignment!r}")
        positions = self.start_positions(total_frames, fps)
        delta_audio = max(round(audio_duration * _FRACTION_RATE) - int(window_seconds * _FRACTION_RATE), 0)
        delta_video = max(total_frames - self.span(fps), 0.0)
        if delta_video == 0:
            return np.zeros(len(positions))
        return np.array([int(delta_audio * position / delta_video) for position in positions]) / _FRACTION_RATE


def as_clip_selection(value: int | Sequence[int] | None) -> tuple[int, ...] | None:
    """``temporal_index`` as a tuple (one index or several), ``None`` for all clips."""
    if value is None:
        return None
    return (int(value),) if isinstance(value, int) else tuple(int(index) for index in value)
