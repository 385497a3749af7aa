"""A small synthetic audio-visual classification dataset of real encoded media files, for demos and tests.

Why synthetic: the demo must show fine-tuning reaching high held-out accuracy in minutes on a CPU without downloading
anything, and the tests need real files that go through the same PyAV decoding as user data (not arrays that skip it).

Why these classes: each class is a (visual, tone) pair, e.g. 4 classes = {red square, blue circle} x {440 Hz,
1760 Hz}. Two classes that share the picture differ only in the sound and two that share the tone only in the
picture, so a model that ignores either modality is stuck at 50 % on 4 classes; reaching ~100 % needs both.

Why they survive preprocessing: the object is large (about a quarter of the frame side) and stays in the central
region, [0.3, 0.7] of the frame, which every evaluation crop (128 of the short side resized to 128) and every training
crop (112 of a short side in [128, 160]) contains, so no crop cuts it off; flat colours and a step-edged shape are
unchanged by nearest resizing. The tones (440 and 1760 Hz, 2 octaves apart) fall into mel bins far apart at any
sample rate, and the feature extractor resamples to 44.1 kHz anyway. Per-video randomness (position, velocity, size,
background level, pixel noise, tone phase, amplitude, slight detuning, noise floor) keeps the task from being a lookup
of identical files; the seed fixes all of it, so the same arguments give the same media content.

Layout: ``<output_dir>/{train,test}/<class>/<class>_<nn>.mp4`` (the "folder" and "kinetics-sounds" layouts of
``avbert.data.folders.load_media_dataset`` read it), or ``<output_dir>/<class>/...`` with ``test_fraction=0``.
The video is MPEG-4 part 2 (yuv420p), the audio AAC mono.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

__all__ = [
    "TONES_HZ",
    "VISUALS",
    "SyntheticClass",
    "class_names",
    "main",
    "make_synthetic_av_dataset",
    "synthetic_classes",
    "write_long_video",
]

# (colour name, RGB, shape); colours differ strongly in hue so chroma subsampling and compression keep them apart.
VISUALS: tuple[tuple[str, tuple[int, int, int], str], ...] = (
    ("red", (220, 30, 30), "square"),
    ("blue", (30, 60, 220), "circle"),
    ("green", (30, 200, 40), "diamond"),
)
TONES_HZ: tuple[float, ...] = (440.0, 1760.0)
# Fraction of the frame side the object's center may reach (the part every crop keeps, see the module docstring).
_CENTER_LOW, _CENTER_HIGH = 0.38, 0.62
_VIDEO_CODEC = "mpeg4"
_AUDIO_CODEC = "aac"


@dataclass(frozen=True)
class SyntheticClass:
    """One class: the picture (colour + shape) and the tone that define it."""

    colour: str
    rgb: tuple[int, int, int]
    shape: str
    tone_hz: float

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.shape}_{int(self.tone_hz)}hz"


def synthetic_classes(num_classes: int = 4) -> list[SyntheticClass]:
    """The classes in generation order: every tone for the first visual, then for the next visual, ...

    ``num_classes`` must be a multiple of the number of tones (2), at most ``len(VISUALS) * 2``: only then is every
    visual paired with every tone, which is what makes both modalities necessary.
    """
    num_tones = len(TONES_HZ)
    if num_classes < num_tones or num_classes % num_tones or num_classes > len(VISUALS) * num_tones:
        raise ValueError(
            f"num_classes must be one of {list(range(num_tones, len(VISUALS) * num_tones + 1, num_tones))}"
        )
    return [
        SyntheticClass(colour, rgb, shape, tone)
        for colour, rgb, shape in VISUALS[: num_classes // num_tones]
        for tone in TONES_HZ
    ]


def class_names(num_classes: int = 4) -> list[str]:
    """Class (folder) names in generation order; a folder dataset sorts them alphabetically."""
    return [item.name for item in synthetic_classes(num_classes)]


# ---------------------------------------------------------------------------------------------------------------------
# Content


def _shape_mask(shape: str, size: int, center: np.ndarray, half: float) -> np.ndarray:
    """Boolean (size, size) mask of the object; equal-ish areas so size is no cue for the shape."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = ys - center[1], xs - center[0]
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "circle":
        return dx**2 + dy**2 <= (1.13 * half) ** 2
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.41 * half
    raise ValueError(f"unknown shape {shape!r}")


def render_frames(item: SyntheticClass, rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """uint8 RGB frames (T, size, size, 3): the object bouncing inside the central region over a noisy grey field."""
    low, high = _CENTER_LOW * size, _CENTER_HIGH * size
    position = rng.uniform(low, high, size=2)
    velocity = rng.uniform(-1.0, 1.0, size=2) * size / 60.0
    half = size * rng.uniform(0.11, 0.14)
    background = rng.uniform(90, 150)
    colour = np.asarray(item.rgb, np.float32) * rng.uniform(0.85, 1.0)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for index in range(num_frames):
        image = np.full((size, size, 3), background, np.float32)
        image[_shape_mask(item.shape, size, position, half)] = colour
        image += rng.normal(0.0, 4.0, size=image.shape)
        frames[index] = np.clip(image, 0, 255).astype(np.uint8)
        position += velocity
        bounced = (position < low) | (position > high)
        velocity[bounced] *= -1
        position = np.clip(position, low, high)
    return frames


def render_tone(item: SyntheticClass, rng: np.random.Generator, duration: float, sample_rate: int) -> np.ndarray:
    """float32 mono (samples,): the class tone, slightly detuned, random phase and level, over a faint noise floor."""
    seconds = np.arange(round(duration * sample_rate)) / sample_rate
    frequency = item.tone_hz * rng.uniform(0.98, 1.02)
    amplitude = rng.uniform(0.2, 0.5)
    tone = amplitude * np.sin(2 * np.pi * frequency * seconds + rng.uniform(0, 2 * np.pi))
    return (tone + rng.normal(0.0, 0.01, size=seconds.shape)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Encoding


def write_av_file(path: Path, frames: np.ndarray, fps: int, waveform: np.ndarray, sample_rate: int) -> Path:
    """Encode ``frames`` (T, H, W, 3) and a mono ``waveform`` into an MP4 (MPEG-4 part 2 video + AAC audio)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream(_VIDEO_CODEC, rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.codec_context.options = {"qscale": "3"}  # near-lossless colours at these tiny sizes
        audio = container.add_stream(_AUDIO_CODEC, rate=sample_rate, layout="mono")
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        frame = av.AudioFrame.from_ndarray(waveform[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, 0
        container.mux(audio.encode(frame))
        container.mux(audio.encode())
    return path


def write_long_video(path: Path, seconds: int, fps: int = 30, rate: int = 48000) -> Path:
    """A long 64x48 H.264 video with a 48 kHz AAC mono sound track (a tone that changes each second), written a second
    at a time so that hours of it never sit in memory: for the memory tests and the long-video benchmark."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="mono")
        times = np.arange(rate) / rate
        for second in range(seconds):
            for index in range(fps):
                image = np.full((48, 64, 3), (second * fps + index) % 256, np.uint8)
                container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            tone = (0.3 * np.sin(2 * np.pi * (200 + second % 100) * times)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, second * rate
            container.mux(audio.encode(frame))
        container.mux(video.encode())
        container.mux(audio.encode())
    return path


def _video_rng(seed: int, class_index: int, video_index: int) -> np.random.Generator:
    """One independent stream per video: a file's content does not depend on how many others are generated."""
    return np.random.default_rng([seed, class_index, video_index])


def _split_of(video_index: int, videos_per_class: int, test_fraction: float) -> str | None:
    """The last ``round(videos_per_class * test_fraction)`` videos of each class are the test split."""
    if test_fraction <= 0:
        return None
    num_test = max(1, round(videos_per_class * test_fraction))
    if num_test >= videos_per_class:
        raise ValueError(f"test_fraction={test_fraction} leaves no training videos out of {videos_per_class}")
    return "test" if video_index >= videos_per_class - num_test else "train"


def make_synthetic_av_dataset(
    output_dir: str | Path,
    num_classes: int = 4,
    videos_per_class: int = 12,
    seed: int = 0,
    duration: float = 3.0,
    size: int = 64,
    fps: int = 15,
    test_fraction: float = 0.25,
    sample_rate: int = 16000,
) -> Path:
    """Write the dataset (see the module docstring) and return ``output_dir``.

    Args:
        output_dir: created if needed; files already there with the same names are overwritten.
        num_classes: 2, 4 or 6 ((visual, tone) pairs; see `synthetic_classes`).
        videos_per_class: files per class, over both splits.
        seed: fixes every random choice.
        duration: seconds per file (sound and picture).
        size: frame side in pixels (square frames: every spatial crop then sees the whole object).
        fps: video frame rate.
        test_fraction: share of each class written under ``test/`` (the rest under ``train/``); 0 writes
            ``<class>/`` folders directly under ``output_dir``.
        sample_rate: audio rate; the feature extractor resamples to 44.1 kHz.
    """
    output_dir = Path(output_dir)
    num_frames = max(1, round(duration * fps))
    for class_index, item in enumerate(synthetic_classes(num_classes)):
        for video_index in range(videos_per_class):
            rng = _video_rng(seed, class_index, video_index)
            split = _split_of(video_index, videos_per_class, test_fraction)
            folder = output_dir / split / item.name if split else output_dir / item.name
            write_av_file(
                folder / f"{item.name}_{video_index:03d}.mp4",
                render_frames(item, rng, num_frames, size),
                fps,
                render_tone(item, rng, num_frames / fps, sample_rate),
                sample_rate,
            )
    return output_dir


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m avbert.data.synthetic OUT``: write the demo dataset."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--num-classes", type=int, default=4)
    parser.add_argument("--videos-per-class", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    args = parser.parse_args(argv)
    if not math.isfinite(args.duration) or args.duration <= 0:
        parser.error("--duration must be a positive number of seconds")
    path = make_synthetic_av_dataset(
        args.output_dir,
        num_classes=args.num_classes,
        videos_per_class=args.videos_per_class,
        seed=args.seed,
        duration=args.duration,
        size=args.size,
        fps=args.fps,
        test_fraction=args.test_fraction,
    )
    print(f"Wrote {args.num_classes * args.videos_per_class} videos under {path}")


if __name__ == "__main__":
    main()
