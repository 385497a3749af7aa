"""AVBERT video processor: a video (file, bytes or frames) -> ``pixel_values`` (batch, clips, 3, frames, H, W).

A ``BaseVideoProcessor`` like transformers' VideoMAE or VJEPA2 ones: class attributes, and the hooks AVBERT needs.
The base class merges and validates the keyword arguments and calls, in order,

1. ``sample_frames``: the clip frame indices ``(clips, num_frames)``, from :mod:`.clip_sampling`;
2. ``_decode_and_sample_videos``: files are decoded with :mod:`.media_decoding` (PyAV), only the sampled frames, each
   once, and cut to their crop window (resized, cropped and flipped by one gather) as they are decoded (in training
   after the video's draw, see below); frame arrays are indexed the same way;
3. ``_preprocess``: on those unique frames, the training draw (scale, crop and flip shared by the clips of a video,
   per-clip brightness / contrast factors) where decoding did not make it, the nearest short-side resize (one
   gather), crops (slices) and flip where decoding did not do them, the uint8 clips gathered from the frames, then
   ``normalize_clips``: ``x / 255``, the jitter and ``(x - 0.45) / 0.225`` (``defer_normalization`` leaves that to
   the caller, e.g. on the GPU).

This reproduces the original data pipeline exactly (``ks_tiny_visual_seq`` and the full-size clips of the parity
fixtures). The sound belongs to :class:`~.feature_extraction_avbert.AVBertFeatureExtractor`; with
``load_audio_in_video`` (transformers' name) a call on files also returns the log-mel of the sound under each clip
(``preprocess_with_sound``, with the feature extractor of the processor this belongs to, or the one saved in the folder
it was loaded from), so that ``pipeline("video-classification")``, which calls the video processor alone, gets the
sound of an audio-visual model too.

Decisions worth knowing:

- ``frame_sampling_rate`` is the original's ``DATA.SAMPLING_RATE`` (the frame stride); not ``sampling_rate``, which
  processors route to the feature extractor as the audio rate.
- ``num_frames`` is the number of frames per clip; sampling is always clip based, so the pipeline's
  ``num_frames=config.num_frames, do_sample_frames=True`` gives the normal output. ``do_sample_frames=False`` says a
  frame array already holds ``clips * num_frames`` frames in clip order; for files it is ignored.
- ``fps`` (transformers' "sample this many frames per second") is refused: the rate is ``target_fps`` /
  ``frame_sampling_rate``. The frame rate of an array comes from ``video_metadata`` (``{"fps": 25}``), else 30.
- Training crops may start at every offset, including the last one, which the original's
  ``np.random.randint(0, dim - crop)`` never picks. Randomness comes from ``generator`` or ``seed``.
- ``all_views=True`` returns the three evaluation crops as batch rows, video-major: row ``3 * b + c`` is video ``b``,
  crop ``c`` (average the model's scores over each group of three, as the original's test ensemble does).
- Files are resized and cropped while they are decoded (each kept frame, by the same nearest gather, so bit for bit
  as resizing and cropping after): a call never holds a video's frames at source size (up to ``clips * num_frames``
  frames, about 2 GB at 1080p). The crop must be known first, so in training each video's draw is made before it is
  decoded, in the order ``_preprocess`` draws for frame arrays: a seed gives the same crops for a file and for its
  frames. Frame arrays are resized and cropped in ``_preprocess`` (transformers' order).
- Only nearest-neighbour resizing is implemented (what the original used).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.utils import logging
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata, make_batched_videos

from .clip_sampling import DEFAULT_FPS, ClipSampling, as_clip_selection
from .feature_extraction_avbert import AVBertAudioKwargs, AVBertFeatureExtractor
from .media_decoding import is_media_source, out_of_memory_names, read_video, reopenable

__all__ = ["AVBertVideoMetadata", "AVBertVideoProcessor", "AVBertVideoProcessorKwargs"]

logger = logging.get_logger(__name__)

# Settings earlier versions kept on the video processor, their defaults, and where they live now.
_MOVED_SETTINGS = {
    "audio_alignment": ("timestamp", "AVBertFeatureExtractor(audio_alignment=...)"),
    "clip_gain_jitter_db": (0.0, "the processor's call: processor(..., clip_gain_jitter_db=...)"),
    "audio_sampling_rate": (44100, "AVBertFeatureExtractor(sampling_rate=...)"),
    "num_mel_bins": (80, "AVBertFeatureExtractor(feature_size=...)"),
    "audio_time_frames": (128, "AVBertFeatureExtractor(num_time_frames=...)"),
    "audio_feature_extractor": (None, "AVBertProcessor(feature_extractor=...)"),
}


class AVBertVideoProcessorKwargs(VideosKwargs, total=False):
    """Keyword arguments of :class:`AVBertVideoProcessor` on top of transformers' ``VideosKwargs``.

    num_clips: clips per video, uniformly spaced over it.
    frame_sampling_rate: frame stride at ``target_fps`` (the original's ``DATA.SAMPLING_RATE``).
    target_fps: the frame rate the stride refers to; a clip spans ``num_frames * frame_sampling_rate / target_fps`` s.
    temporal_index: keep only these clips (of the ``num_clips`` uniformly spaced ones).
    spatial_crop: evaluation crop, 0/1/2 = left/center/right (top/center/bottom when the frames are taller than wide).
    all_views: evaluation: return all three spatial crops as separate batch rows.
    do_train_augmentation: random short-side scale, random crop and horizontal flip instead of the evaluation crop.
    train_jitter_scales: (min, max) of the random short side. train_crop_size: side of the random square crop.
    flip_prob: probability of the horizontal flip.
    clip_brightness_jitter / clip_contrast_jitter: training only, not in the original (pretraining): each clip gets
        its own factors, uniform in ``[1 - j, 1 + j]``, applied with torchvision's ``adjust_brightness`` /
        ``adjust_contrast`` on pixels in [0, 1]. 0 (the default) turns it off.
    seed / generator: source of the training randomness.
    load_audio_in_video: route calls on files to the audio-visual processor (frames and the sound under each clip).
        None (the default): as the model saved in the same folder needs (its config's ``use_audio``), so a default
        processor saved beside a model reads the sound that model hears; see ``reads_sound``.
    defer_normalization: return the clips as uint8 (resized, cropped and flipped: every step that moves pixels) and,
        with clip jitter, its factors as ``clip_jitter`` (batch, clips, 2: brightness, contrast); ``normalize_clips``
        then does the rest on the device the model runs on (DataLoader workers send 4x fewer bytes).
    """

    num_clips: int | None
    frame_sampling_rate: int | None
    target_fps: int | float | None
    temporal_index: int | list[int] | tuple[int, ...] | None
    spatial_crop: int | None
    all_views: bool | None
    do_train_augmentation: bool | None
    train_jitter_scales: tuple[int, int] | list[int] | None
    train_crop_size: int | None
    flip_prob: int | float | None
    clip_brightness_jitter: int | float | None
    clip_contrast_jitter: int | float | None
    seed: int | None
    generator: torch.Generator | None
    load_audio_in_video: bool | None
    defer_normalization: bool | None


@dataclass
class AVBertVideoMetadata(VideoMetadata):
    """transformers' ``VideoMetadata`` plus what places the clips in time: the video stream's ``start_time`` and the
    presentation time of every frame (``frame_times``, for variable frame rates; ``None`` when not trustworthy)."""

    start_time: float = 0.0
    frame_times: np.ndarray | None = field(default=None, repr=False)


@dataclass
class _SampledVideo:
    """One video between the hooks: its unique sampled frames (U, H, W, 3) and, per clip frame, its row among them;
    for a file decoded at its output size, the source size and the training draw that size came from."""

    frames: Any
    positions: np.ndarray  # (clips, num_frames)
    source_size: tuple[int, int] | None = None  # (height, width) before the decoder's resize; None: frames' own
    augmentation: _Augmentation | None = None
    window: _DecodeWindow | None = None  # the part of the resized frames the decoder kept; None: all of them


@dataclass(frozen=True)
class _Augmentation:
    """One video's training draw: one scale, crop and flip for all of its clips, and per-clip jitter factors."""

    short_side: int
    uniforms: tuple[float, float, float]  # crop y, crop x, flip
    brightness: tuple[float, ...] = ()
    contrast: tuple[float, ...] = ()

    @classmethod
    def draw(cls, kwargs: dict[str, Any], generator: torch.Generator | None, num_clips: int) -> _Augmentation | None:
        """One video's draw under the call's settings; ``None`` outside training."""
        if not kwargs.get("do_train_augmentation"):
            return None
        values = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        factors = {}
        # Drawn after the crop values, so that turning the jitter on leaves a seed's crops and flips unchanged.
        for name in ("brightness", "contrast"):
            jitter = float(kwargs[f"clip_{name}_jitter"])
            if jitter > 0:
                uniforms = torch.rand(num_clips, generator=generator, dtype=torch.float64)
                factors[name] = tuple((1 - jitter + 2 * jitter * uniforms).tolist())
        low, high = (int(scale) for scale in kwargs["train_jitter_scales"])
        return cls(round(low + (high - low) * values[0]), (values[1], values[2], values[3]), **factors)

    def jitter_factors(self, num_clips: int) -> torch.Tensor | None:
        """``(clips, 2)`` float64 brightness and contrast factors (1 where that jitter is off); None without jitter."""
        if not (self.brightness or self.contrast):
            return None
        ones = (1.0,) * num_clips
        return torch.tensor([self.brightness or ones, self.contrast or ones], dtype=torch.float64).T.contiguous()


@dataclass(frozen=True)
class _DecodeWindow:
    """What the decoder keeps of each frame: rows ``[top, top + height)`` and columns ``[left, left + width)`` of the
    frame resized to ``out_size``, mirrored with ``flip``. One nearest gather from the source frame makes it (the
    resize, crop and flip of ``_preprocess`` in one step, bit for bit), so a frame is never resized whole."""

    out_size: tuple[int, int]
    top: int
    left: int
    height: int
    width: int
    flip: bool = False

    def source_indices(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The source rows and columns of the window's pixels, for frames of ``height`` x ``width``."""
        rows = nearest_source_indices(height, self.out_size[0])[self.top : self.top + self.height]
        cols = nearest_source_indices(width, self.out_size[1])[self.left : self.left + self.width]
        return rows.numpy(), (cols.flip(0) if self.flip else cols).numpy()


# ---------------------------------------------------------------------------------------------------------------------
# Nearest resizing and cropping of uint8 frames (..., H, W, C) are gathers, so they are exact


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Output size of the original's short-side resize: the long side becomes floor(L / S * s)."""
    if width < height:
        return math.floor(float(height) / width * short_side), short_side
    return short_side, math.floor(float(width) / height * short_side)


@functools.lru_cache(maxsize=256)
def nearest_source_indices(in_size: int, out_size: int) -> torch.Tensor:
    """Source index of every output row/column of ``interpolate(mode="nearest")``, the original's resize: computed by
    interpolating the index ramp itself, so it is torch's own rounding rule."""
    ramp = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
    resized = torch.nn.functional.interpolate(ramp, size=(out_size, 1), mode="nearest")
    return resized.view(out_size).long()


def resize_frames(frames: np.ndarray | torch.Tensor, height: int, width: int) -> np.ndarray | torch.Tensor:
    """Nearest resize of channels-last frames (..., H, W, C) to (height, width)."""
    rows = nearest_source_indices(frames.shape[-3], height)
    cols = nearest_source_indices(frames.shape[-2], width)
    if isinstance(frames, torch.Tensor):
        if frames.device.type == "cpu":  # numpy's take is twice as fast as torch's gathers here
            return torch.from_numpy(resize_frames(frames.numpy(), height, width))
        return frames.index_select(-3, rows.to(frames.device)).index_select(-2, cols.to(frames.device))
    return np.take(np.take(frames, rows.numpy(), axis=-3), cols.numpy(), axis=-2)


def output_size(
    height: int, width: int, do_resize: bool, size: SizeDict, augmentation: _Augmentation | None
) -> tuple[int, int]:
    """Size of the frames after the resize step: the training draw's short side, else ``size`` with ``do_resize``."""
    if augmentation is not None:
        return short_side_size(height, width, augmentation.short_side)
    if not do_resize:
        return height, width
    if size.shortest_edge is not None:
        return short_side_size(height, width, size.shortest_edge)
    return size.height, size.width  # `_validate_preprocess_kwargs` refused a size with neither


def uniform_crop_offsets(height: int, width: int, crop: int, spatial_index: int) -> tuple[int, int]:
    """The original's ``uniform_crop``: start/center/end along the long axis, centred on the other."""
    y_offset = math.ceil((height - crop) / 2)
    x_offset = math.ceil((width - crop) / 2)
    if height > width:
        y_offset = {0: 0, 1: y_offset, 2: height - crop}[spatial_index]
    else:
        x_offset = {0: 0, 1: x_offset, 2: width - crop}[spatial_index]
    return y_offset, x_offset


# ---------------------------------------------------------------------------------------------------------------------
# The processor


class AVBertVideoProcessor(BaseVideoProcessor):
    r"""Video processor for AVBERT: clips of a video, resized, cropped and normalized as the original did.

    Inputs: a path, bytes, a binary file object, a ``datasets`` video value, a frame array or tensor ``(T, H, W, C)`` /
    ``(T, C, H, W)`` (uint8 in [0, 255] or float on the same scale), a list of frames, or a list or 5-D batch of these.
    Returns ``pixel_values`` of shape ``(batch, num_clips, 3, num_frames, H, W)``; see the module docstring.
    """

    valid_kwargs = AVBertVideoProcessorKwargs
    model_input_names = ["pixel_values"]

    resample = PILImageResampling.NEAREST
    # Lists, not tuples: they round-trip through JSON (`to_dict` of a saved and a loaded processor are equal).
    image_mean = [0.45, 0.45, 0.45]
    image_std = [0.225, 0.225, 0.225]
    size = {"shortest_edge": 128}
    default_to_square = False
    crop_size = {"height": 128, "width": 128}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = True
    num_frames = 32
    num_clips = 10
    frame_sampling_rate = 2
    target_fps = 30
    temporal_index = None
    spatial_crop = 1
    all_views = False
    do_train_augmentation = False
    train_jitter_scales = [128, 160]
    train_crop_size = 112
    flip_prob = 0.5
    clip_brightness_jitter = 0.0
    clip_contrast_jitter = 0.0
    seed = None
    generator = None
    load_audio_in_video = None
    defer_normalization = False

    def __init__(self, **kwargs: Unpack[AVBertVideoProcessorKwargs]) -> None:
        for name in sorted(set(kwargs) & set(_MOVED_SETTINGS)):  # saved by earlier versions: load, say where it went
            value = kwargs.pop(name)
            default, now = _MOVED_SETTINGS[name]
            if value != default:
                logger.warning(f"AVBertVideoProcessor ignores `{name}={value!r}`: set {now}.")
        for name in ("train_jitter_scales", "temporal_index", "image_mean", "image_std"):
            if isinstance(kwargs.get(name), tuple):
                kwargs[name] = list(kwargs[name])  # as JSON gives them back
        super().__init__(**kwargs)
        self._processor: Any = None  # the AVBertProcessor this belongs to (a weak reference), for load_audio_in_video
        self._pretrained_from: tuple[str, dict[str, Any]] | None = None
        self._model_uses_audio: bool | None = None  # read from the folder's config.json on first need

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """As the base; the folder is remembered, so that a call that needs the sound can load the processor the
        video processor was saved with (its feature extractor) from the same place."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        video_processor = loaded[0] if isinstance(loaded, tuple) else loaded
        hub = {key: kwargs[key] for key in ("cache_dir", "revision", "token", "local_files_only") if key in kwargs}
        video_processor._pretrained_from = (os.fspath(pretrained_model_name_or_path), hub)
        return loaded

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for name in ("_processor", "_pretrained_from", "_model_uses_audio"):
            output.pop(name, None)
        return output

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_processor": None}  # a weak reference does not pickle (DataLoader workers)

    # -- the hooks ----------------------------------------------------------------------------------------------------

    def clip_sampling(self, **kwargs: Any) -> ClipSampling:
        """The clip timing of a call: its arguments over this processor's settings."""

        def setting(name: str) -> Any:
            return kwargs[name] if kwargs.get(name) is not None else getattr(self, name)

        return ClipSampling(
            num_clips=int(setting("num_clips")),
            num_frames=int(setting("num_frames")),
            frame_sampling_rate=int(setting("frame_sampling_rate")),
            target_fps=float(setting("target_fps")),
            temporal_index=as_clip_selection(setting("temporal_index")),
        )

    def sample_frames(self, metadata: VideoMetadata, **kwargs: Any) -> np.ndarray:
        """transformers' sampling hook: the frame indices ``(clips, num_frames)`` of the clips for ``metadata``."""
        if kwargs.get("fps") is not None:
            raise ValueError(
                "AVBertVideoProcessor samples clips at `target_fps` / `frame_sampling_rate`, not at `fps`; give the "
                "frame rate of frame arrays as `video_metadata={'fps': ...}`."
            )
        return self.clip_sampling(**kwargs).frame_indices(metadata.total_num_frames, metadata.fps)

    def fetch_videos(
        self,
        video_url_or_urls: Any,
        sample_indices_fn: Any = None,
        window_of: Callable[[int, int], _DecodeWindow] | None = None,
    ) -> Any:
        """Decode with PyAV (transformers would use torchcodec): the unique sampled frames of each file, and its
        ``AVBertVideoMetadata`` whose ``frames_indices`` are the clip indices. With ``window_of`` (the frames'
        ``(height, width)`` -> the ``_DecodeWindow`` to keep), each frame is resized, cropped and flipped as it is
        decoded, by one nearest gather (what ``_preprocess``'s steps give), and only the windows are held."""
        if isinstance(video_url_or_urls, list):
            return tuple(
                zip(*[self.fetch_videos(item, sample_indices_fn, window_of) for item in video_url_or_urls], strict=True)
            )
        sampled = []
        source_size: list[tuple[int, int]] = []
        window: list[tuple[_DecodeWindow, np.ndarray, np.ndarray]] = []

        def cut(frame: np.ndarray) -> np.ndarray:
            height, width, channels = frame.shape
            if not window:  # the reader gives every frame of a file the size of the first
                source_size[:] = [(height, width)]
                kept = window_of(height, width)
                rows, cols = kept.source_indices(height, width)
                # The columns' bytes in a row of (W * C) bytes: one gather of bytes is twice as fast as one of C-byte
                # pixels, and it is the same gather.
                window[:] = [(kept, rows, (cols[:, None] * channels + np.arange(channels)).ravel())]
            _, rows, row_bytes = window[0]
            kept_rows = np.take(frame.reshape(height, width * channels), rows, axis=0)
            return np.take(kept_rows, row_bytes, axis=1).reshape(len(rows), len(row_bytes) // channels, channels)

        def choose(info: Any) -> np.ndarray:
            metadata = VideoMetadata(total_num_frames=info.num_frames, fps=info.fps)
            sampled.append((sample_indices_fn or self.sample_frames)(metadata=metadata))
            return np.unique(sampled[0])

        decoded = read_video(video_url_or_urls, choose, frame_transform=cut if window_of is not None else None)
        info = decoded.info.video
        metadata = AVBertVideoMetadata(
            total_num_frames=info.num_frames,
            fps=info.fps,
            width=info.width,
            height=info.height,
            duration=info.duration,
            video_backend="pyav",
            frames_indices=sampled[0].tolist(),
            start_time=info.start_time,
            frame_times=decoded.frame_times,
        )
        positions = np.searchsorted(decoded.indices, sampled[0])
        video = _SampledVideo(decoded.frames, positions)
        if window:
            video.source_size, video.window = source_size[0], window[0][0]
        return video, metadata

    def _decode_and_sample_videos(
        self, videos: Any, video_metadata: Any, do_sample_frames: bool | None = None, sample_indices_fn: Any = None
    ) -> tuple[list[_SampledVideo], list[VideoMetadata]]:
        """Files: decoded, only their sampled frames. Arrays: the sampled frames, each once; with
        ``do_sample_frames=False`` an array must already hold the clips' frames in clip order."""
        if is_media_source(videos) or (isinstance(videos, list | tuple) and all(map(is_media_source, videos))):
            items = [videos] if is_media_source(videos) else list(videos)
            return self._decode_files(items, sample_indices_fn)
        arrays = make_batched_videos(videos)
        metadata = _metadata_list(video_metadata, len(arrays))
        sampled = []
        for video, item in zip(arrays, metadata, strict=True):
            total = len(video)
            if total == 0:
                raise ValueError("a video needs at least one frame")
            item.total_num_frames, item.fps = total, item.fps if item.fps and item.fps > 0 else DEFAULT_FPS
            # Without sampling the frames are the clips' already, in clip order; `_preprocess` checks the count.
            indices = sample_indices_fn(metadata=item) if sample_indices_fn is not None else np.arange(total)
            unique, positions = np.unique(indices, return_inverse=True)
            item.frames_indices = indices.tolist()
            frames = video[torch.from_numpy(unique) if torch.is_tensor(video) else unique]
            sampled.append(_SampledVideo(frames, positions.reshape(indices.shape)))
        return sampled, metadata

    def _decode_files(self, items: list[Any], sample_indices_fn: Any) -> tuple[list[_SampledVideo], list[Any]]:
        """Files, each decoded straight to the part of its output frames that the crops take, which is known before
        decoding: from the call's settings (``BaseVideoProcessor.preprocess`` binds them into ``sample_indices_fn``)
        and, in training, the video's draw, made here in the order ``_preprocess`` draws for frame arrays (so a seed
        gives the same crops either way)."""
        call = getattr(sample_indices_fn, "keywords", None)
        if call is None:  # the hook called on its own: frames at source size, resized by `_preprocess`
            return self.fetch_videos(items, sample_indices_fn)
        kwargs = self._standardize_kwargs(**call)
        self._validate_preprocess_kwargs(**kwargs)  # before decoding: errors in the settings are not decode errors
        generator = _generator(kwargs)
        num_clips = len(self.clip_sampling(**kwargs).selected_clips)
        videos, metadata = [], []
        for item in items:
            augmentation = _Augmentation.draw(kwargs, generator, num_clips)
            window_of = functools.partial(_decode_window, kwargs=kwargs, augmentation=augmentation)
            video, item_metadata = self.fetch_videos(item, sample_indices_fn, window_of)
            video.augmentation = augmentation
            videos.append(video)
            metadata.append(item_metadata)
        return videos, metadata

    def _prepare_input_videos(
        self,
        videos: list[_SampledVideo],
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        device: str | None = None,
    ) -> list[_SampledVideo]:
        """Frames as (U, H, W, 3) tensors on ``device``: channels moved last, gray repeated, alpha dropped."""
        for video in videos:
            frames = _channels_last(video.frames, input_data_format)
            video.frames = frames.to(device) if device is not None else frames
        return videos

    def _validate_preprocess_kwargs(self, **kwargs: Any) -> None:
        """Refuse settings the original pipeline has no meaning for, with the reason."""
        super()._validate_preprocess_kwargs(**kwargs)
        if kwargs.get("spatial_crop") not in (0, 1, 2):
            raise ValueError(f"spatial_crop must be 0, 1 or 2, got {kwargs.get('spatial_crop')}")
        size = kwargs.get("size")
        if kwargs.get("do_resize") and not (size is not None and (size.shortest_edge or (size.height and size.width))):
            raise ValueError(f"size must give shortest_edge or height and width, got {size}")
        crop = kwargs.get("crop_size")
        if crop is not None and crop.height != crop.width:
            raise ValueError(f"only square crops are supported, got crop_size={crop}")
        if kwargs.get("do_resize") and kwargs.get("resample") not in (None, PILImageResampling.NEAREST):
            raise ValueError(
                f"only nearest resizing (the original's) is implemented, got resample={kwargs['resample']}"
            )
        for name in ("clip_brightness_jitter", "clip_contrast_jitter"):
            value = float(kwargs[name])
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1) (the factors 1 +- {name} stay positive), got {value}")
            if value > 0 and not (kwargs["do_rescale"] and float(kwargs["rescale_factor"]) == 1 / 255):
                raise ValueError(f"{name} works on pixels in [0, 1]: it needs do_rescale with rescale_factor 1 / 255")
        if kwargs.get("do_train_augmentation") and kwargs.get("all_views"):
            raise ValueError("all_views is an evaluation option; training uses one random crop per video")

    def _preprocess(
        self,
        videos: list[_SampledVideo],
        do_resize: bool,
        size: SizeDict,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...],
        image_std: float | tuple[float, ...],
        return_tensors: Any = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Unique frames -> resized, cropped, flipped views -> uint8 clips -> (unless ``defer_normalization``)
        [0, 1], per-clip jitter and normalization by ``normalize_clips``, per video."""
        generator = _generator(kwargs)
        sampling = self.clip_sampling(**kwargs)
        defer = bool(kwargs.get("defer_normalization"))
        rows, jitters = [], []
        for video in videos:
            if video.positions.ndim == 1:  # do_sample_frames=False: the frames hold the clips in clip order
                expected = len(sampling.selected_clips) * sampling.num_frames
                if len(video.positions) != expected:
                    raise ValueError(
                        f"with do_sample_frames=False a video must hold clips * num_frames = {expected} frames in "
                        f"clip order, got {len(video.positions)}"
                    )
                video.positions = video.positions.reshape(-1, sampling.num_frames)
            # Files: drawn before decoding. Frame arrays: drawn here, in the same order.
            augmentation = video.augmentation or _Augmentation.draw(kwargs, generator, len(video.positions))
            source_size = video.source_size or tuple(video.frames.shape[1:3])
            out_size = output_size(*source_size, do_resize, size, augmentation)
            window = video.window or _DecodeWindow(out_size, 0, 0, *out_size)
            frames = video.frames
            if video.window is None and tuple(frames.shape[1:3]) != out_size:  # not resized by the decoder
                frames = resize_frames(frames, *out_size)
            views = [
                frames[:, y - window.top : y - window.top + crop, x - window.left : x - window.left + crop]
                for y, x, crop in _view_boxes(out_size, do_center_crop, crop_size, kwargs, augmentation)
            ]
            if _flips(kwargs, augmentation) and not window.flip:
                views = [view.flip(2) for view in views]
            clips = _clips(views, torch.from_numpy(video.positions))
            jitter = augmentation.jitter_factors(clips.shape[1]) if augmentation is not None else None
            jitter = jitter.expand(len(views), *jitter.shape) if jitter is not None else None  # (views, clips, 2)
            if defer:
                rows.append(clips)
                jitters.append(jitter)
            else:
                rows.append(
                    normalize_clips(
                        clips, jitter, do_rescale, rescale_factor, do_normalize, image_mean, image_std, device=None
                    )
                )
        shapes = {tuple(item.shape[1:]) for item in rows}
        if len(shapes) > 1:
            raise ValueError(f"videos of one batch must give clips of one shape, got {sorted(shapes)}; crop them")
        data = {"pixel_values": rows[0] if len(rows) == 1 else torch.cat(rows)}
        if any(jitter is not None for jitter in jitters):
            data["clip_jitter"] = torch.cat(
                [
                    torch.ones(*row.shape[:2], 2, dtype=torch.float64) if jitter is None else jitter
                    for jitter, row in zip(jitters, rows, strict=True)
                ]
            )
        return BatchFeature(data, tensor_type=return_tensors)

    def normalize_clips(
        self,
        pixel_values: torch.Tensor,
        clip_jitter: torch.Tensor | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The rest of the processing of ``defer_normalization=True`` clips, on ``pixel_values``' device (or
        ``device``): float32, ``x / 255``, the per-clip jitter of ``clip_jitter`` and ``(x - mean) / std``, with this
        processor's settings (``kwargs`` override them: ``do_rescale``, ``rescale_factor``, ``do_normalize``,
        ``image_mean``, ``image_std``). Gives what the call without ``defer_normalization`` gives: exactly on the same
        device, within float rounding (1e-5) on another."""

        def setting(name: str) -> Any:
            return kwargs[name] if kwargs.get(name) is not None else getattr(self, name)

        return normalize_clips(
            pixel_values,
            clip_jitter,
            bool(setting("do_rescale")),
            float(setting("rescale_factor")),
            bool(setting("do_normalize")),
            setting("image_mean"),
            setting("image_std"),
            device=device,
        )

    # -- routing for load_audio_in_video ------------------------------------------------------------------------------

    def preprocess(self, videos: Any, **kwargs: Unpack[AVBertVideoProcessorKwargs]) -> BatchFeature:
        """``pixel_values`` of one video or a batch; for files whose sound is read (``reads_sound``), also their
        ``input_features`` (``preprocess_with_sound``; the stock video-classification pipeline calls this)."""
        items = videos if isinstance(videos, list | tuple) else [videos]
        files = bool(items) and all(map(is_media_source, items))
        if files and self.reads_sound(kwargs.pop("load_audio_in_video", None)):
            return_tensors = kwargs.pop("return_tensors", None)
            return_metadata = bool(kwargs.pop("return_metadata", False))
            # The sound's own settings (e.g. `clip_gain_jitter_db`) go to the feature extractor, as a processor routes.
            audio_kwargs = {name: kwargs.pop(name) for name in _SOUND_ONLY_KWARGS & kwargs.keys()}
            data = self.preprocess_with_sound(
                videos, self.sound_feature_extractor(), kwargs, audio_kwargs, return_metadata
            )
            return BatchFeature(data=data, tensor_type=return_tensors)
        if not files:
            return super().preprocess(videos, **kwargs)
        with out_of_memory_names(items):
            # Files are always sampled; this also has the base bind the call's settings into `sample_indices_fn`.
            return super().preprocess(videos, **{**kwargs, "do_sample_frames": True})

    def reads_sound(self, load_audio_in_video: bool | None = None, default: bool = False) -> bool:
        """Whether a call on files reads the sound: the call's ``load_audio_in_video``, else this processor's, else
        what the model saved in the folder it was loaded from needs (``use_audio`` of its ``config.json``), else
        ``default`` (frames only for the video processor; the ``AVBertProcessor`` reads the sound).

        Why the model decides when nothing is set: a processor built with the defaults and saved beside a model
        (``AVBertProcessor().save_pretrained(folder)``) must give that model the inputs it needs, the sound for an
        audio-visual model, the frames alone for a visual-only one (whose videos may have no sound)."""
        for value in (load_audio_in_video, self.load_audio_in_video):
            if value is not None:
                return bool(value)
        if self._model_uses_audio is None and self._pretrained_from is not None:
            from .configuration_avbert import AVBertConfig

            path, hub = self._pretrained_from
            with contextlib.suppress(OSError):  # no model in that folder: nothing to follow
                self._model_uses_audio = bool(AVBertConfig.from_pretrained(path, **hub).use_audio)
        return default if self._model_uses_audio is None else self._model_uses_audio

    def preprocess_with_sound(
        self,
        videos: Any,
        feature_extractor: AVBertFeatureExtractor,
        video_kwargs: dict[str, Any],
        audio_kwargs: dict[str, Any],
        return_metadata: bool = False,
    ) -> dict[str, Any]:
        """``pixel_values`` of media files and, from ``feature_extractor``, the ``input_features`` of the sound under
        each sampled clip, its window placed by the clip's presentation time; with ``all_views`` every crop row hears
        its video's sound. What both the processor and a video processor that reads the sound answer for files."""
        items = [reopenable(item) for item in (videos if isinstance(videos, list | tuple) else [videos])]
        videos = items if isinstance(videos, list | tuple) else items[0]  # the sound is read after the frames
        audio_kwargs = dict(audio_kwargs)
        alignment = audio_kwargs.pop("audio_alignment", None)
        video_kwargs = {**video_kwargs, "load_audio_in_video": False}
        data = dict(self(videos, return_metadata=True, return_tensors="pt", **video_kwargs))
        metadata = data["video_metadata"] if return_metadata else data.pop("video_metadata")
        sampling = self.clip_sampling(**video_kwargs)
        train = bool(video_kwargs.get("do_train_augmentation", self.do_train_augmentation))
        features = []
        for item, meta in zip(items, metadata, strict=True):
            with out_of_memory_names(item):
                features.append(
                    feature_extractor.log_mels_under_clips(
                        item,
                        meta,
                        sampling,
                        alignment,
                        train=train,
                        clip_starts=audio_kwargs.get("clip_starts"),
                        apply_masking=audio_kwargs.get("apply_masking"),
                        clip_gain_jitter_db=audio_kwargs.get("clip_gain_jitter_db"),
                    )
                )
        rows = data["pixel_values"].shape[0] // len(metadata)  # 3 with all_views
        data["input_features"] = torch.cat(features).repeat_interleave(rows, dim=0)
        return data

    def sound_feature_extractor(self) -> AVBertFeatureExtractor:
        """The feature extractor for the sound of a call on files: that of the ``AVBertProcessor`` holding this, else
        the one saved beside it (the folder it was loaded from), else a default one whose window is one clip."""
        processor = self._processor() if self._processor is not None else None
        if processor is not None:
            return processor.feature_extractor
        try:
            path, hub = self._pretrained_from or (None, {})
            feature_extractor = AVBertFeatureExtractor.from_pretrained(path, **hub) if path else None
        except OSError:  # a folder with a video processor alone
            feature_extractor = None
        if feature_extractor is None:
            rate = AVBertFeatureExtractor().sampling_rate
            feature_extractor = AVBertFeatureExtractor(clip_samples=int(rate * self.clip_sampling().clip_seconds))
        return feature_extractor

    def belong_to(self, processor: Any) -> None:
        """Called by ``AVBertProcessor``: calls on files that need the sound use its feature extractor (a weak
        reference, no cycle)."""
        self._processor = weakref.ref(processor)


# Keyword arguments of the sound that no video setting shares: routed to the feature extractor of a call on files.
_SOUND_ONLY_KWARGS = frozenset(AVBertAudioKwargs.__annotations__) - frozenset(
    AVBertVideoProcessorKwargs.__annotations__
)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def _generator(kwargs: dict[str, Any]) -> torch.Generator | None:
    """The call's source of training randomness: ``generator``, else one seeded with ``seed``."""
    generator = kwargs.get("generator")
    if generator is None and kwargs.get("seed") is not None:
        generator = torch.Generator().manual_seed(int(kwargs["seed"]))
    return generator


def _per_channel(value: float | tuple[float, ...]) -> tuple[float, ...]:
    return (float(value),) * 3 if isinstance(value, int | float) else tuple(float(v) for v in value)


def _metadata_list(video_metadata: Any, count: int) -> list[VideoMetadata]:
    if video_metadata is None:
        return [VideoMetadata(total_num_frames=0) for _ in range(count)]
    items = video_metadata if isinstance(video_metadata, list | tuple) else [video_metadata]
    if len(items) != count:
        raise ValueError(f"got {count} videos but {len(items)} video_metadata entries")
    return [
        item if isinstance(item, VideoMetadata) else VideoMetadata(**{"total_num_frames": 0, **dict(item)})
        for item in items
    ]


def _channels_last(video: Any, input_data_format: ChannelDimension | str | None) -> torch.Tensor:
    """A video as a (T, H, W, 3) tensor: frames stacked, channels moved last, gray repeated, alpha dropped."""
    if isinstance(video, list):
        video = np.stack([np.asarray(frame) for frame in video])
    frames = torch.from_numpy(np.ascontiguousarray(video)) if isinstance(video, np.ndarray) else video
    if frames.ndim == 3:  # gray frames
        frames = frames[..., None]
    channels_first = (
        ChannelDimension(input_data_format) == ChannelDimension.FIRST
        if input_data_format is not None
        else frames.shape[-1] not in (1, 3, 4) and frames.shape[1] in (1, 3, 4)
    )
    if channels_first:
        frames = frames.permute(0, 2, 3, 1)
    if frames.shape[-1] == 1:
        frames = frames.expand(*frames.shape[:-1], 3)
    elif frames.shape[-1] == 4:
        frames = frames[..., :3]
    elif frames.shape[-1] != 3:
        raise ValueError(f"frames must have 1, 3 or 4 channels, got shape {tuple(frames.shape)}")
    return frames


def _check_crop_fits(height: int, width: int, crop: int) -> None:
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} does not fit frames of {height}x{width}; resize them first (do_resize=True)")


def _view_boxes(
    out_size: tuple[int, int],
    do_center_crop: bool,
    crop_size: SizeDict,
    kwargs: dict[str, Any],
    augmentation: _Augmentation | None,
) -> list[tuple[int, int, int]]:
    """``(top, left, side)`` of the square views of frames of ``out_size``: one random crop in training, one or three
    evaluation crops, or the whole frames (``side`` is then their height; they need not be square)."""
    if augmentation is not None:
        crop = int(kwargs["train_crop_size"])
        _check_crop_fits(*out_size, crop)
        y = int(augmentation.uniforms[0] * (out_size[0] - crop + 1))
        x = int(augmentation.uniforms[1] * (out_size[1] - crop + 1))
        return [(y, x, crop)]
    if not do_center_crop:
        return [(0, 0, max(out_size))]  # slicing past the end keeps the whole frame
    crop = int(crop_size.height)
    _check_crop_fits(*out_size, crop)
    offsets = [uniform_crop_offsets(*out_size, crop, index) for index in (0, 1, 2)]
    chosen = offsets if kwargs.get("all_views") else [offsets[int(kwargs["spatial_crop"])]]
    return [(y, x, crop) for y, x in chosen]


def _flips(kwargs: dict[str, Any], augmentation: _Augmentation | None) -> bool:
    return augmentation is not None and augmentation.uniforms[2] < float(kwargs["flip_prob"])


def _decode_window(
    height: int, width: int, kwargs: dict[str, Any], augmentation: _Augmentation | None
) -> _DecodeWindow:
    """The part of a file's resized frames that its views take (their bounding box), flipped in training. A crop
    that does not fit keeps the whole resized frames, so that ``_preprocess`` raises its own error."""
    out_size = output_size(height, width, kwargs["do_resize"], kwargs["size"], augmentation)
    try:
        boxes = _view_boxes(out_size, kwargs["do_center_crop"], kwargs["crop_size"], kwargs, augmentation)
    except ValueError:
        return _DecodeWindow(out_size, 0, 0, *out_size)
    top, left = min(y for y, _, _ in boxes), min(x for _, x, _ in boxes)
    bottom = min(max(y + side for y, _, side in boxes), out_size[0])
    right = min(max(x + side for _, x, side in boxes), out_size[1])
    return _DecodeWindow(out_size, top, left, bottom - top, right - left, flip=_flips(kwargs, augmentation))


def _clips(views: list[torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """(U, H, W, C) views of the unique frames and (clips, T) frame rows -> (views, clips, C, T, H, W), the dtype of the
    frames: each view's unique frames laid out channels first once (the one strided copy, over the unique frames, not
    over the clips' frames, which overlap or repeat in short videos), then every clip gathered as whole planes into
    its place (3.4x faster than gathering channels-last and permuting the clips: 10 clips of 32 frames at 15 fps)."""
    clips, num_frames = positions.shape
    height, width, channels = views[0].shape[1:]
    out = views[0].new_empty((len(views), clips, channels, num_frames, height, width))
    positions = positions.to(views[0].device)
    for index, view in enumerate(views):
        planes = view.permute(3, 0, 1, 2).contiguous()  # (C, U, H, W)
        for clip in range(clips):
            torch.index_select(planes, 1, positions[clip], out=out[index, clip])
    return out


def normalize_clips(
    clips: torch.Tensor,
    clip_jitter: torch.Tensor | None,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: float | tuple[float, ...],
    image_std: float | tuple[float, ...],
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """(rows, clips, C, T, H, W) clips (uint8 or float) -> float32, on ``device`` (default: their own): ``x / 255``,
    the per-clip jitter (``clip_jitter``: (rows, clips, 2) brightness and contrast factors, for pixels in [0, 1]) and
    ``(x - mean) / std``. Every tensor it makes is on the clips' device; a pinned CPU tensor is copied without
    blocking."""
    device = torch.device(device) if device is not None else clips.device
    values = clips.to(device, non_blocking=clips.is_pinned(), dtype=torch.float32, copy=True)
    if do_rescale:
        values.div_(1.0 / rescale_factor)  # divide: x / 255 differs from x * (1 / 255) in float32
    if clip_jitter is not None:
        _jitter_clips(values, clip_jitter)
    if do_normalize:
        shape = (1, 1, -1, 1, 1, 1)
        values.sub_(torch.tensor(_per_channel(image_mean), device=device).view(shape))
        values.div_(torch.tensor(_per_channel(image_std), device=device).view(shape))
    return values


def _jitter_clips(values: torch.Tensor, factors: torch.Tensor) -> None:
    """Per-clip brightness then contrast of (rows, clips, C, T, H, W) pixels in [0, 1], in place: torchvision's
    ``adjust_brightness`` / ``adjust_contrast`` (contrast around each frame's grayscale mean), for all clips at once.
    ``factors`` (rows, clips, 2) are float64 on the CPU (as ``_preprocess`` makes them): the factor and one minus it
    are rounded to float32 there, as torchvision rounds its Python floats, and a factor of 1 everywhere skips its step.
    """
    factors = factors.to("cpu", torch.float64)
    shape = (*factors.shape[:2], 1, 1, 1, 1)

    def on_device(value: torch.Tensor) -> torch.Tensor:
        return value.to(torch.float32).view(shape).to(values.device)

    brightness, contrast = factors.unbind(-1)
    if not bool(torch.all(brightness == 1)):
        values.mul_(on_device(brightness)).clamp_(0, 1)
    if not bool(torch.all(contrast == 1)):
        red, green, blue = values.unbind(2)
        gray = red.mul(0.2989).add_(green, alpha=0.587).add_(blue, alpha=0.114)  # torchvision's rgb_to_grayscale
        mean = gray.mean(dim=(-2, -1), keepdim=True).unsqueeze(2)  # (rows, clips, 1, T, 1, 1): per frame
        values.mul_(on_device(contrast)).add_(mean.mul_(on_device(1 - contrast))).clamp_(0, 1)
