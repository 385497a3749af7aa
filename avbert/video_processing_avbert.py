"""AVBERT video processor: a video (file, bytes or frames) -> ``pixel_values`` (batch, clips, 3, frames, H, W).

It reproduces the original data pipeline exactly (``ks_tiny_visual_seq`` and the full-size clips of the parity
fixtures): uniformly spaced clips of ``num_frames`` frames spanning ``num_frames * frame_sampling_rate / target_fps``
seconds each, a nearest-neighbour short-side resize, a left/center/right (or top/center/bottom) crop in evaluation or a
random scale, crop and flip shared by all clips of a video in training, and ``(x / 255 - 0.45) / 0.225``.

Decisions worth knowing:

- Files are decoded with :mod:`.media_decoding` (PyAV), never torchcodec: only the sampled frames are decoded, seeking
  between clips, and they are resized while decoding so that large sources do not fill memory.
- ``frame_sampling_rate`` is the original's ``DATA.SAMPLING_RATE`` (the frame stride). It is not called
  ``sampling_rate`` because processors route flat keyword arguments to every sub-processor that declares them, and
  ``sampling_rate`` is the audio rate of the feature extractor: ``processor(..., sampling_rate=44100)`` would set the
  frame stride to 44100.
- ``num_frames`` is the number of frames per clip. The video-classification pipeline passes ``num_frames`` (the
  config's, 32) and ``do_sample_frames=True``; sampling is always clip based, so that call gives the normal output.
  ``do_sample_frames=False`` is only meaningful for frame arrays: it says the array already holds
  ``num_clips * num_frames`` frames in clip order (e.g. from :func:`.media_decoding.read_video_and_audio` with
  :meth:`AVBertVideoProcessor.sample_clip_indices`), which are then not sampled again. For files it is ignored.
- ``fps`` (transformers' "sample this many frames per second") is refused: the output rate is fixed by
  ``target_fps`` and ``frame_sampling_rate``. The frame rate of a frame array comes from ``video_metadata``
  (``{"fps": 25}``); without it 30 fps is assumed, the original's target rate.
- One clip (``num_clips=1``) is centred in the video; the original divides by zero there.
- Training crops may start at every offset, including the last one, which the original's
  ``np.random.randint(0, dim - crop)`` never picks. Randomness comes from ``generator`` or ``seed``.
- ``all_views=True`` (evaluation) returns the three spatial crops as separate batch rows, video-major:
  ``(batch * 3, clips, 3, frames, H, W)``, row ``3 * b + c`` is video ``b``, crop ``c``. The model can take that as a
  bigger batch; average its scores over each group of three, as the original's test ensemble does.
- Only nearest-neighbour resizing is implemented (what the original used).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from huggingface_hub.dataclasses import validate_typed_dict
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict, validate_kwargs
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from .feature_extraction_avbert import AVBertFeatureExtractor
from .media_decoding import (
    AudioTrack,
    DecodedMedia,
    MediaDecodeError,
    MediaSource,
    VideoStreamInfo,
    is_media_source,
    read_video_and_audio,
    reopenable,
)

__all__ = ["AVBertVideoProcessor", "AVBertVideoProcessorKwargs"]

DEFAULT_FPS = 30.0
# Frame times within this of index / fps are a constant rate written with rounded timestamps (Matroska stores
# milliseconds): the rate places clips more precisely than the rounded times.
_STEADY_RATE_TOLERANCE_SECONDS = 0.002


class AVBertVideoProcessorKwargs(VideosKwargs, total=False):
    """Keyword arguments of :class:`AVBertVideoProcessor` on top of transformers' ``VideosKwargs``.

    num_clips: clips per video, uniformly spaced over it.
    frame_sampling_rate: frame stride at ``target_fps`` (the original's ``DATA.SAMPLING_RATE``).
    target_fps: the frame rate the stride refers to; a clip spans ``num_frames * frame_sampling_rate / target_fps`` s.
    spatial_crop: evaluation crop, 0/1/2 = left/center/right (top/center/bottom when the frames are taller than wide).
    all_views: evaluation: return all three spatial crops as separate batch rows.
    temporal_index: keep only these clips (of the ``num_clips`` uniformly spaced ones), e.g. one view of the original's
        10 temporal views.
    do_train_augmentation: random short-side scale, random crop and horizontal flip instead of the evaluation crop.
    train_jitter_scales: (min, max) of the random short side.
    train_crop_size: side of the random square crop.
    flip_prob: probability of the horizontal flip.
    clip_brightness_jitter / clip_contrast_jitter: training only, not in the original (used for pretraining): each clip
        gets its own brightness and contrast factors, uniform in ``[1 - j, 1 + j]`` (torchvision's ``ColorJitter``
        ranges), applied with torchvision's ``adjust_brightness`` / ``adjust_contrast``. 0 (the default) turns it off.
    clip_gain_jitter_db: training only, with ``load_audio_in_video``: each clip's sound window gets its own gain,
        uniform in +-this many dB (see ``AVBertFeatureExtractor``). 0 (the default) turns it off.
    seed / generator: source of the training randomness, for reproducible augmentation.
    load_audio_in_video: also decode the sound track of video files (same container, one pass) and return the log-mel
        of the window under each clip as ``input_features``; a file without audio is refused. With training
        augmentation the log-mels get the training masks too.
    audio_alignment: ``"timestamp"`` (each clip's window starts at the clip's time) or ``"fraction"`` (the original:
        the same fraction of the audio as of the video).
    audio_sampling_rate / num_mel_bins / audio_time_frames: settings of the log-mel (see ``AVBertFeatureExtractor``)
        when no ``audio_feature_extractor`` is passed; the window is the clip's duration.
    audio_feature_extractor: an ``AVBertFeatureExtractor`` to compute the log-mels with (``AVBertProcessor`` passes
        its own).
    """

    num_clips: int | None
    frame_sampling_rate: int | None
    target_fps: int | float | None
    spatial_crop: int | None
    all_views: bool | None
    temporal_index: int | list[int] | tuple[int, ...] | None
    do_train_augmentation: bool | None
    train_jitter_scales: tuple[int, int] | list[int] | None
    train_crop_size: int | None
    flip_prob: int | float | None
    clip_brightness_jitter: int | float | None
    clip_contrast_jitter: int | float | None
    clip_gain_jitter_db: int | float | None
    seed: int | None
    generator: torch.Generator | None
    load_audio_in_video: bool | None
    audio_alignment: str | None
    audio_sampling_rate: int | None
    num_mel_bins: int | None
    audio_time_frames: int | None
    audio_feature_extractor: Any


# ---------------------------------------------------------------------------------------------------------------------
# Temporal sampling (pure functions, shared by files and frame arrays)


def clip_span(fps: float, num_frames: int, frame_sampling_rate: int, target_fps: float) -> float:
    """Source frames covered by one clip: num_frames * rate * round(fps) / target_fps (no fps resampling)."""
    rounded_fps = max(round(fps), 1)
    return num_frames * frame_sampling_rate * rounded_fps / target_fps


def clip_starts(total_frames: int, span: float, num_clips: int) -> list[float]:
    """Float start positions delta * i / (S - 1), delta = max(total - span, 0); one clip is centred."""
    delta = max(total_frames - span, 0.0)
    if num_clips == 1:
        return [delta / 2]
    return [delta * index / (num_clips - 1) for index in range(num_clips)]


def clip_frame_indices(total_frames: int, start: float, span: float, num_frames: int) -> np.ndarray:
    """The original's rule, bit for bit: float32 linspace(start, start + span - 1), clamped, truncated."""
    positions = torch.linspace(start, start + span - 1, num_frames)
    return torch.clamp(positions, 0, total_frames - 1).long().numpy()


def sample_clips(
    total_frames: int,
    fps: float | None,
    *,
    num_clips: int,
    num_frames: int,
    frame_sampling_rate: int,
    target_fps: float,
    temporal_index: int | Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Float start positions ``(clips,)`` and frame indices ``(clips, num_frames)`` of the selected clips.

    ``fps`` is the source frame rate; ``None`` or non-positive means 30. ``temporal_index`` keeps only those clips.
    """
    if total_frames < 1:
        raise ValueError(f"a video needs at least one frame, got total_frames={total_frames}")
    span = clip_span(_effective_fps(fps), num_frames, frame_sampling_rate, target_fps)
    starts = clip_starts(total_frames, span, num_clips)
    selected = [starts[index] for index in _clip_selection(temporal_index, num_clips)]
    indices = np.stack([clip_frame_indices(total_frames, start, span, num_frames) for start in selected])
    return np.asarray(selected, dtype=np.float64), indices


# ---------------------------------------------------------------------------------------------------------------------
# Spatial transforms on uint8 frames (T, H, W, C): nearest resizing and cropping are gathers, so they are exact


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Output size of the original's short-side resize: the long side becomes floor(L / S * s)."""
    if width < height:
        return math.floor(float(height) / width * short_side), short_side
    return short_side, math.floor(float(width) / height * short_side)


@functools.lru_cache(maxsize=256)
def nearest_source_indices(in_size: int, out_size: int) -> torch.Tensor:
    """Source index of every output row/column of ``interpolate(mode="nearest")``, the original's resize.

    Computed by interpolating the index ramp itself, so it is torch's own rounding rule and not a re-derivation.
    """
    ramp = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
    resized = torch.nn.functional.interpolate(ramp, size=(out_size, 1), mode="nearest")
    return resized.view(out_size).long()


def resize_frames(frames: np.ndarray | torch.Tensor, height: int, width: int) -> np.ndarray | torch.Tensor:
    """Nearest resize of channels-last frames (..., H, W, C) to (height, width)."""
    rows = nearest_source_indices(frames.shape[-3], height)
    cols = nearest_source_indices(frames.shape[-2], width)
    if isinstance(frames, np.ndarray):
        return frames[..., rows.numpy(), :, :][..., cols.numpy(), :]
    return frames[..., rows, :, :][..., cols, :]


def uniform_crop_offsets(height: int, width: int, crop: int, spatial_index: int) -> tuple[int, int]:
    """The original's ``uniform_crop``: start/center/end along the long axis, centred on the other."""
    y_offset = math.ceil((height - crop) / 2)
    x_offset = math.ceil((width - crop) / 2)
    if height > width:
        y_offset = {0: 0, 1: y_offset, 2: height - crop}[spatial_index]
    else:
        x_offset = {0: 0, 1: x_offset, 2: width - crop}[spatial_index]
    return y_offset, x_offset


@dataclass(frozen=True)
class _Augmentation:
    """One video's training draw: the same scale, crop and flip for all of its clips and frames, and, when asked, a
    brightness and a contrast factor per clip."""

    short_side: int
    uniforms: tuple[float, float, float]  # crop y, crop x, flip
    brightness: tuple[float, ...] = ()  # one factor per clip, or none
    contrast: tuple[float, ...] = ()

    @classmethod
    def draw(cls, options: _Options, num_clips: int) -> _Augmentation:
        generator = options.generator
        values = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        low, high = options.train_jitter_scales
        factors = {}
        # Drawn after the crop values, so that turning the jitter on leaves a seed's crops and flips unchanged.
        jitters = {"brightness": options.clip_brightness_jitter, "contrast": options.clip_contrast_jitter}
        for name, jitter in jitters.items():
            if jitter > 0:
                uniforms = torch.rand(num_clips, generator=generator, dtype=torch.float64)
                factors[name] = tuple((1 - jitter + 2 * jitter * uniforms).tolist())
        return cls(
            short_side=round(low + (high - low) * values[0]), uniforms=(values[1], values[2], values[3]), **factors
        )

    def crop_offsets(self, height: int, width: int, crop: int) -> tuple[int, int]:
        return int(self.uniforms[0] * (height - crop + 1)), int(self.uniforms[1] * (width - crop + 1))

    def flips(self, probability: float) -> bool:
        return self.uniforms[2] < probability


# ---------------------------------------------------------------------------------------------------------------------
# The processor


@dataclass(frozen=True)
class _Options:
    """The effective settings of one call: call arguments over instance attributes."""

    num_clips: int
    num_frames: int
    frame_sampling_rate: int
    target_fps: float
    temporal_index: tuple[int, ...] | None
    do_sample_frames: bool
    do_resize: bool
    size: SizeDict
    do_center_crop: bool
    crop_size: int
    spatial_crop: int
    all_views: bool
    train: bool
    train_jitter_scales: tuple[int, int]
    train_crop_size: int
    flip_prob: float
    clip_brightness_jitter: float
    clip_contrast_jitter: float
    clip_gain_jitter_db: float
    generator: torch.Generator | None
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    input_data_format: ChannelDimension | None
    device: Any
    return_metadata: bool
    audio_extractor: AVBertFeatureExtractor | None
    audio_alignment: str


class AVBertVideoProcessor(BaseVideoProcessor):
    r"""Video processor for AVBERT: clips of a video, resized, cropped and normalized as the original did.

    Inputs: a path (str or ``os.PathLike``), bytes, a binary file object, a frame array or tensor ``(T, H, W, C)`` /
    ``(T, C, H, W)`` (uint8 in [0, 255] or float on the same scale), a list of frames, or a list or 5-D batch of these.
    Returns ``pixel_values`` of shape ``(batch, num_clips, 3, num_frames, H, W)``; see the module docstring for the
    decisions taken where the original was silent or broken.

    To decode a file once for both modalities (as ``AVBertProcessor`` does)::

        decoded = read_video_and_audio(path, lambda info: vp.sample_clip_indices(info.num_frames, info.fps).ravel())
        pixel_values = vp(decoded.frames, do_sample_frames=False)["pixel_values"]
        start_times = vp.clip_start_times(decoded.info.video.num_frames, decoded.info.video.fps)
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
    spatial_crop = 1
    all_views = False
    temporal_index = None
    do_train_augmentation = False
    train_jitter_scales = [128, 160]
    train_crop_size = 112
    flip_prob = 0.5
    clip_brightness_jitter = 0.0
    clip_contrast_jitter = 0.0
    clip_gain_jitter_db = 0.0
    seed = None
    generator = None
    load_audio_in_video = False
    audio_alignment = "timestamp"
    audio_sampling_rate = 44100
    num_mel_bins = 80
    audio_time_frames = 128
    audio_feature_extractor = None

    def __init__(self, **kwargs: Unpack[AVBertVideoProcessorKwargs]) -> None:
        for name in ("train_jitter_scales", "temporal_index", "image_mean", "image_std"):
            if isinstance(kwargs.get(name), tuple):
                kwargs[name] = list(kwargs[name])  # as JSON gives them back
        super().__init__(**kwargs)

    # -- temporal sampling --------------------------------------------------------------------------------------------

    def sample_clip_indices(
        self,
        total_frames: int,
        fps: float | None,
        num_clips: int | None = None,
        num_frames: int | None = None,
        temporal_index: int | Sequence[int] | None = None,
    ) -> np.ndarray:
        """Frame indices ``(clips, num_frames)`` of the uniformly spaced clips, exactly as the original chose them.

        ``fps`` is the source frame rate (``None`` or non-positive means 30); it is rounded, as in the original.
        Unset arguments come from the instance.
        """
        return self._sample(total_frames, fps, num_clips, num_frames, temporal_index)[1]

    def clip_start_times(
        self,
        total_frames: int,
        fps: float | None,
        num_clips: int | None = None,
        num_frames: int | None = None,
        temporal_index: int | Sequence[int] | None = None,
    ) -> np.ndarray:
        """Start time in seconds, relative to the first frame, of each clip: ``start / fps``.

        Meant for aligning audio windows with clips by timestamp (the original aligned by fraction of duration).
        """
        starts = self._sample(total_frames, fps, num_clips, num_frames, temporal_index)[0]
        return starts / _effective_fps(fps)

    def audio_clip_starts(
        self, total_frames: int, fps: float | None, audio_duration: float, clip_seconds: float, **kwargs: Any
    ) -> np.ndarray:
        """Start (seconds from the first audio sample) of each clip's audio window, for frames and a waveform given
        apart: the clips the call's settings (``kwargs`` as for ``__call__``) sample, placed as ``audio_alignment``
        says, exactly as for a file whose streams both start at 0 (``AVBertProcessor`` uses it for arrays)."""
        options = self._options(kwargs)
        starts, _ = self._sample_options(total_frames, fps, options)
        fps = _effective_fps(fps)
        return audio_window_starts(
            starts,
            fps=fps,
            total_frames=total_frames,
            span=clip_span(fps, options.num_frames, options.frame_sampling_rate, options.target_fps),
            video_start_time=0.0,
            audio_start_time=0.0,
            audio_duration=audio_duration,
            clip_seconds=clip_seconds,
            alignment=options.audio_alignment,
        )

    def _sample(
        self,
        total_frames: int,
        fps: float | None,
        num_clips: int | None,
        num_frames: int | None,
        temporal_index: int | Sequence[int] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return sample_clips(
            total_frames,
            fps,
            num_clips=num_clips or self.num_clips,
            num_frames=num_frames or self.num_frames,
            frame_sampling_rate=self.frame_sampling_rate,
            target_fps=self.target_fps,
            temporal_index=temporal_index if temporal_index is not None else self.temporal_index,
        )

    def sample_frames(self, metadata: VideoMetadata, num_frames: int | None = None, **kwargs: Any) -> np.ndarray:
        """transformers' sampling hook: the flattened clip indices (clips * num_frames) for ``metadata``."""
        return self.sample_clip_indices(metadata.total_num_frames, metadata.fps, num_frames=num_frames).reshape(-1)

    def fetch_videos(self, video_url_or_urls: Any, sample_indices_fn: Any = None) -> Any:
        """Decode with PyAV (transformers would use torchcodec); returns frames and ``VideoMetadata`` like the base."""
        if isinstance(video_url_or_urls, list):
            return list(zip(*[self.fetch_videos(item, sample_indices_fn) for item in video_url_or_urls], strict=True))

        def choose(info: VideoStreamInfo) -> np.ndarray:
            metadata = _metadata_from_info(info)
            return sample_indices_fn(metadata=metadata) if sample_indices_fn else np.arange(info.num_frames)

        decoded = read_video_and_audio(video_url_or_urls, choose, load_audio=False)
        metadata = _metadata_from_info(decoded.info.video)
        metadata.frames_indices = decoded.indices.tolist()
        return decoded.frames, metadata

    # -- preprocessing ------------------------------------------------------------------------------------------------

    def preprocess(self, videos: Any, **kwargs: Unpack[AVBertVideoProcessorKwargs]) -> BatchFeature:
        """Turn one video or a batch into ``pixel_values`` (batch, clips, 3, frames, H, W); see the class docstring."""
        validate_kwargs(
            captured_kwargs=kwargs.keys(),
            valid_processor_keys=[*self.valid_kwargs.__annotations__, "return_tensors"],
        )
        validate_typed_dict(self.valid_kwargs, kwargs)
        options = self._options(kwargs)
        inputs = _as_video_list(videos)
        metadata = _metadata_list(kwargs.get("video_metadata"), len(inputs))
        clips, used_metadata, log_mels = [], [], []
        for video, video_metadata in zip(inputs, metadata, strict=True):
            video_clips, video_metadata, video_log_mels = self._process_video(video, video_metadata, options)
            clips.append(video_clips)
            used_metadata.append(video_metadata)
            log_mels.append(video_log_mels)
        pixel_values = _stack_batch(clips)
        data: dict[str, Any] = {"pixel_values": pixel_values}
        if options.audio_extractor is not None:
            # One row per video and view, like pixel_values: every crop of a video hears the same sound.
            data["input_features"] = torch.cat(
                [mel.expand(len(view), *mel.shape[1:]) for mel, view in zip(log_mels, clips, strict=True)]
            )
        if options.return_metadata:
            data["video_metadata"] = used_metadata
        return BatchFeature(data=data, tensor_type=kwargs.get("return_tensors"))

    def _options(self, kwargs: dict[str, Any]) -> _Options:
        values = {
            name: kwargs[name] if kwargs.get(name) is not None else getattr(self, name, None)
            for name in self.valid_kwargs.__annotations__
        }
        _validate_settings(values)
        standard = self._standardize_kwargs(**values)
        generator = values["generator"]
        if generator is None and values["seed"] is not None:
            generator = torch.Generator().manual_seed(int(values["seed"]))
        crop = standard["crop_size"]
        low, high = (int(scale) for scale in values["train_jitter_scales"])
        return _Options(
            num_clips=int(values["num_clips"]),
            num_frames=int(values["num_frames"]),
            frame_sampling_rate=int(values["frame_sampling_rate"]),
            target_fps=float(values["target_fps"]),
            temporal_index=_as_tuple(values["temporal_index"]),
            do_sample_frames=values["do_sample_frames"] is not False,
            do_resize=bool(values["do_resize"]),
            size=standard["size"],
            do_center_crop=bool(values["do_center_crop"]),
            crop_size=int(crop.height) if crop is not None else 0,
            spatial_crop=int(values["spatial_crop"]),
            all_views=bool(values["all_views"]),
            train=bool(values["do_train_augmentation"]),
            train_jitter_scales=(low, high),
            train_crop_size=int(values["train_crop_size"]),
            flip_prob=float(values["flip_prob"]),
            clip_brightness_jitter=float(values["clip_brightness_jitter"]),
            clip_contrast_jitter=float(values["clip_contrast_jitter"]),
            clip_gain_jitter_db=float(values["clip_gain_jitter_db"]),
            generator=generator,
            do_rescale=bool(values["do_rescale"]),
            rescale_factor=float(values["rescale_factor"]),
            do_normalize=bool(values["do_normalize"]),
            image_mean=_per_channel(standard["image_mean"]),
            image_std=_per_channel(standard["image_std"]),
            input_data_format=values["input_data_format"],
            device=values["device"],
            return_metadata=bool(values["return_metadata"]),
            audio_extractor=self._audio_extractor(values) if values["load_audio_in_video"] else None,
            audio_alignment=str(values["audio_alignment"]),
        )

    @staticmethod
    def _audio_extractor(values: dict[str, Any]) -> AVBertFeatureExtractor:
        """The extractor for the sound track: the one passed in, or one whose window is exactly one clip's duration."""
        if values["audio_feature_extractor"] is not None:
            return values["audio_feature_extractor"]
        clip_seconds = int(values["num_frames"]) * int(values["frame_sampling_rate"]) / float(values["target_fps"])
        return AVBertFeatureExtractor(
            feature_size=int(values["num_mel_bins"]),
            sampling_rate=int(values["audio_sampling_rate"]),
            num_time_frames=int(values["audio_time_frames"]),
            clip_samples=int(int(values["audio_sampling_rate"]) * clip_seconds),
        )

    def _process_video(
        self, video: Any, metadata: dict[str, Any], options: _Options
    ) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """One video -> clips (views, clips, 3, frames, H, W) with views = 3 for ``all_views``, else 1, and, when the
        sound track is loaded, its per-clip log-mels (1, clips, 1, mel, time)."""
        num_clips = len(_clip_selection(options.temporal_index, options.num_clips))
        augmentation = _Augmentation.draw(options, num_clips) if options.train else None
        short_side = augmentation.short_side if augmentation is not None else None
        log_mels = None
        if is_media_source(video):
            frames, positions, video_metadata, log_mels = self._decode(video, options, short_side)
        elif options.audio_extractor is not None:
            raise ValueError(
                "load_audio_in_video needs a video file (path, bytes or file object); for frame arrays pass the audio "
                "to AVBertProcessor as `audio=`."
            )
        else:
            frames, positions, video_metadata = self._sample_array(video, metadata, options, short_side)
        views = [_normalize(view, options) for view in self._crop_views(frames, options, augmentation)]
        clips = _gather_clips(views, torch.from_numpy(positions).view(-1, options.num_frames))
        if augmentation is not None and (augmentation.brightness or augmentation.contrast):
            clips = _jitter_clips(clips, augmentation, options)
        return clips, video_metadata, log_mels

    def _flat_indices(self, total_frames: int, fps: float | None, options: _Options) -> np.ndarray:
        """All clip frame indices of one video, clip after clip."""
        return self._sample_options(total_frames, fps, options)[1].reshape(-1)

    def _decode(
        self, source: MediaSource, options: _Options, short_side: int | None
    ) -> tuple[torch.Tensor, np.ndarray, VideoMetadata, torch.Tensor | None]:
        """Decode each sampled frame once, resizing while decoding, and the sound track if asked, in one pass over the
        file. Returns the unique frames, for every clip frame its row among them (clips overlap or repeat frames in
        short videos), and the per-clip log-mels."""
        sampled: list[tuple[np.ndarray, np.ndarray]] = []

        def choose(info: VideoStreamInfo) -> np.ndarray:
            sampled.append(self._sample_options(info.num_frames, info.fps, options))
            return np.unique(sampled[0][1])

        transform = functools.partial(_resize_frame, options=options, short_side=short_side)
        load_audio = options.audio_extractor is not None
        source = reopenable(source) if load_audio else source  # the sound is read after the frames
        decoded = read_video_and_audio(source, choose, load_audio=False, frame_transform=transform)
        starts, flat_indices = sampled[0][0], sampled[0][1].reshape(-1)
        positions = np.searchsorted(decoded.indices, flat_indices)
        metadata = _metadata_from_info(decoded.info.video)
        metadata.frames_indices = flat_indices.tolist()
        log_mels = self._clip_log_mels(source, decoded, starts, options) if load_audio else None
        return torch.from_numpy(decoded.frames), positions, metadata, log_mels

    def _clip_log_mels(
        self, source: MediaSource, decoded: DecodedMedia, starts: np.ndarray, options: _Options
    ) -> torch.Tensor:
        """Log-mel of the sound under each clip, its window placed by the clip's timestamp (or fraction). Only the
        windows are kept and resampled, so memory follows the clips, not the length of the file."""
        if decoded.info.audio is None:
            raise MediaDecodeError(
                decoded.info.source, "no audio stream, but the sound track was asked for (load_audio_in_video)"
            )
        track = AudioTrack(source)
        extractor = options.audio_extractor
        video = decoded.info.video
        span = clip_span(_effective_fps(video.fps), options.num_frames, options.frame_sampling_rate, options.target_fps)
        seconds = audio_window_starts(
            starts,
            fps=_effective_fps(video.fps),
            total_frames=video.num_frames,
            span=span,
            video_start_time=video.start_time,
            audio_start_time=track.start_time,
            # The original's rule needs the whole track's length: one more decoding pass, still no waveform kept.
            audio_duration=track.num_samples / track.sample_rate if options.audio_alignment == "fraction" else 0.0,
            clip_seconds=extractor.clip_samples / extractor.sampling_rate,
            alignment=options.audio_alignment,
            frame_times=decoded.frame_times,
        )
        return extractor.log_mels_of_windows(
            track.read_windows,
            track.sample_rate,
            seconds,
            apply_masking=options.train,
            clip_gain_jitter_db=options.clip_gain_jitter_db if options.train else 0.0,
        )

    def _sample_options(self, total_frames: int, fps: float | None, options: _Options) -> tuple[np.ndarray, np.ndarray]:
        """Float start positions and frame indices (clips, num_frames) of one video under the call's options."""
        return sample_clips(
            total_frames,
            fps,
            num_clips=options.num_clips,
            num_frames=options.num_frames,
            frame_sampling_rate=options.frame_sampling_rate,
            target_fps=options.target_fps,
            temporal_index=options.temporal_index,
        )

    def _sample_array(
        self, video: Any, metadata: dict[str, Any], options: _Options, short_side: int | None
    ) -> tuple[torch.Tensor, np.ndarray, VideoMetadata]:
        """Frames given as an array: sample the clips (unless already sampled), then resize the unique frames."""
        frames = _channels_last(video, options.input_data_format)
        total = frames.shape[0]
        fps = metadata.get("fps")
        if options.do_sample_frames:
            indices = self._flat_indices(total, fps, options)
        else:
            expected = len(_clip_selection(options.temporal_index, options.num_clips)) * options.num_frames
            if total != expected:
                raise ValueError(
                    f"with do_sample_frames=False a video must hold clips * num_frames = {expected} frames in clip "
                    f"order, got {total}"
                )
            indices = np.arange(total)
        unique, positions = np.unique(indices, return_inverse=True)
        selected = frames[torch.from_numpy(unique)]
        height, width = _resized_size(selected.shape[1], selected.shape[2], options, short_side)
        if (height, width) != tuple(selected.shape[1:3]):
            selected = resize_frames(selected, height, width)
        video_metadata = VideoMetadata(
            total_num_frames=total,
            fps=_effective_fps(fps),
            width=int(frames.shape[2]),
            height=int(frames.shape[1]),
            frames_indices=indices.tolist(),
        )
        return selected, positions, video_metadata

    def _crop_views(
        self, frames: torch.Tensor, options: _Options, augmentation: _Augmentation | None
    ) -> list[torch.Tensor]:
        """The crops of the resized frames (U, H, W, C): one random crop (+flip) in training, 1 or 3 in evaluation."""
        height, width = frames.shape[1], frames.shape[2]
        if augmentation is not None:
            crop = options.train_crop_size
            _check_crop_fits(height, width, crop)
            y, x = augmentation.crop_offsets(height, width, crop)
            view = frames[:, y : y + crop, x : x + crop]
            return [view.flip(2) if augmentation.flips(options.flip_prob) else view]
        if not options.do_center_crop:
            return [frames]
        crop = options.crop_size
        _check_crop_fits(height, width, crop)
        indices = (0, 1, 2) if options.all_views else (options.spatial_crop,)
        views = []
        for index in indices:
            y, x = uniform_crop_offsets(height, width, crop, index)
            views.append(frames[:, y : y + crop, x : x + crop])
        return views


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def audio_window_starts(
    clip_starts: np.ndarray,
    *,
    fps: float,
    total_frames: int,
    span: float,
    video_start_time: float,
    audio_start_time: float,
    audio_duration: float,
    clip_seconds: float,
    alignment: str,
    frame_times: np.ndarray | None = None,
) -> np.ndarray:
    """Start of each clip's audio window, in seconds from the first audio sample.

    ``"timestamp"``: the window starts where the clip starts in time, so picture and sound coincide even when the sound
    track is shorter or offset. That time is the clip's start position read on the frames' presentation times
    (``frame_times``, interpolated between frames), which is right for variable frame rates too; without them (frame
    arrays, streams whose timestamps cannot be trusted) it is position / fps from the video stream's start.
    ``"fraction"``: the original's rule, the same fraction of the audio as of the video,
    ``int(delta_a * start / delta_v)`` samples with ``delta_a`` / ``delta_v`` the audio / video length minus one
    clip; it divided by zero for videos no longer than a clip, where this gives 0.
    """
    if alignment == "timestamp":
        times = clip_starts / fps + video_start_time
        if frame_times is not None and len(frame_times) == total_frames:
            steady = np.arange(total_frames) / fps + frame_times[0]
            if np.abs(frame_times - steady).max() > _STEADY_RATE_TOLERANCE_SECONDS:  # a variable frame rate
                times = np.interp(clip_starts, np.arange(total_frames), frame_times)
        return np.maximum(times - audio_start_time, 0.0)
    if alignment != "fraction":
        raise ValueError(f"audio_alignment must be 'timestamp' or 'fraction', got {alignment!r}")
    rate = 44100  # the original computed the fraction on the 44.1 kHz waveform, in whole samples
    delta_audio = max(round(audio_duration * rate) - int(clip_seconds * rate), 0)
    delta_video = max(total_frames - span, 0.0)
    if delta_video == 0:
        return np.zeros(len(clip_starts))
    return np.array([int(delta_audio * start / delta_video) for start in clip_starts]) / rate


def _validate_settings(values: dict[str, Any]) -> None:
    """Refuse settings the original pipeline has no meaning for, with the reason."""
    if values["fps"] is not None:
        raise ValueError(
            "AVBertVideoProcessor samples clips at `target_fps` / `frame_sampling_rate`, not at `fps`; give the frame "
            "rate of frame arrays as `video_metadata={'fps': ...}`."
        )
    if values["spatial_crop"] not in (0, 1, 2):
        raise ValueError(f"spatial_crop must be 0, 1 or 2, got {values['spatial_crop']}")
    crop = values["crop_size"]
    if isinstance(crop, dict) and crop.get("height") != crop.get("width"):
        raise ValueError(f"only square crops are supported, got crop_size={crop}")
    if values["do_resize"] and values["resample"] not in (None, PILImageResampling.NEAREST):
        raise ValueError(f"only nearest resizing (the original's) is implemented, got resample={values['resample']}")
    if values["audio_alignment"] not in ("timestamp", "fraction"):
        raise ValueError(f"audio_alignment must be 'timestamp' or 'fraction', got {values['audio_alignment']!r}")
    for name in ("clip_brightness_jitter", "clip_contrast_jitter"):
        if not 0 <= float(values[name]) < 1:
            raise ValueError(f"{name} must be in [0, 1) (the factors 1 +- {name} stay positive), got {values[name]}")
        if float(values[name]) > 0 and not (values["do_rescale"] and float(values["rescale_factor"]) == 1 / 255):
            raise ValueError(f"{name} works on pixels in [0, 1]: it needs do_rescale with rescale_factor 1 / 255")
    if not (math.isfinite(float(values["clip_gain_jitter_db"])) and float(values["clip_gain_jitter_db"]) >= 0):
        raise ValueError(f"clip_gain_jitter_db must be a finite number >= 0, got {values['clip_gain_jitter_db']}")
    if values["do_train_augmentation"] and values["all_views"]:
        raise ValueError("all_views is an evaluation option; training uses one random crop per video")


def _per_channel(value: float | Sequence[float]) -> tuple[float, ...]:
    """``image_mean`` / ``image_std`` as one value per RGB channel; a scalar applies to all three."""
    return (float(value),) * 3 if isinstance(value, int | float) else tuple(float(v) for v in value)


def _effective_fps(fps: float | None) -> float:
    return float(fps) if fps is not None and fps > 0 else DEFAULT_FPS


def _as_tuple(value: int | list[int] | tuple[int, ...] | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    return (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)


def _clip_selection(temporal_index: Any, num_clips: int) -> list[int]:
    selection = _as_tuple(temporal_index)
    if selection is None:
        return list(range(num_clips))
    for index in selection:
        if not 0 <= index < num_clips:
            raise ValueError(f"temporal_index {index} is outside 0..{num_clips - 1}")
    return list(selection)


def _is_frame(value: Any) -> bool:
    return (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim in (2, 3)) or _is_pil(value)


def _is_pil(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.")


def _as_video_list(videos: Any) -> list[Any]:
    """One video or a batch -> a list of videos (a source, a 4-D array/tensor, or a list of frames)."""
    if is_media_source(videos):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 4:
            return [videos]
        if videos.ndim == 5:
            return list(videos)
        raise ValueError(f"a frame array must be 4-D (one video) or 5-D (a batch), got shape {tuple(videos.shape)}")
    if isinstance(videos, (list, tuple)) and videos:
        if all(_is_frame(item) for item in videos):
            return [list(videos)]
        return [item for video in videos for item in _as_video_list(video)]
    raise ValueError(f"unsupported video input of type {type(videos).__name__}")


def _metadata_list(video_metadata: Any, count: int) -> list[dict[str, Any]]:
    if video_metadata is None:
        return [{}] * count
    items = video_metadata if isinstance(video_metadata, (list, tuple)) else [video_metadata]
    if len(items) != count:
        raise ValueError(f"got {count} videos but {len(items)} video_metadata entries")
    return [dict(item) for item in items]


def _channels_last(video: Any, input_data_format: ChannelDimension | str | None) -> torch.Tensor:
    """A video as a (T, H, W, 3) tensor: frames stacked, channels moved last, gray repeated, alpha dropped."""
    if isinstance(video, list):
        video = np.stack([np.asarray(frame) for frame in video])
    frames = torch.from_numpy(np.ascontiguousarray(video)) if isinstance(video, np.ndarray) else video
    if frames.ndim == 3:  # a list of gray frames
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
    if frames.shape[0] == 0:
        raise ValueError("a video needs at least one frame")
    return frames


def _resized_size(height: int, width: int, options: _Options, short_side: int | None) -> tuple[int, int]:
    """Frame size after the resize step: the training scale, the evaluation short side, or a fixed size."""
    if short_side is not None:
        return short_side_size(height, width, short_side)
    if not options.do_resize:
        return height, width
    if options.size.shortest_edge is not None:
        return short_side_size(height, width, options.size.shortest_edge)
    if options.size.height is not None and options.size.width is not None:
        return options.size.height, options.size.width
    raise ValueError(f"size must give shortest_edge or height and width, got {options.size}")


def _resize_frame(frame: np.ndarray, options: _Options, short_side: int | None) -> np.ndarray:
    """Resize one decoded (H, W, C) frame; run by the decoder on every kept frame."""
    height, width = _resized_size(frame.shape[0], frame.shape[1], options, short_side)
    if (height, width) == frame.shape[:2]:
        return frame
    return resize_frames(frame[None], height, width)[0]


def _check_crop_fits(height: int, width: int, crop: int) -> None:
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} does not fit frames of {height}x{width}; resize them first (do_resize=True)")


def _normalize(frames: torch.Tensor, options: _Options) -> torch.Tensor:
    """(U, H, W, C) frames -> (C, U, H, W) float32: x / 255 then (x - mean) / std, the original's float32 steps.

    Done on the unique frames, before clips repeat or share them.
    """
    frames = frames.to(options.device) if options.device is not None else frames
    values = torch.empty(frames.permute(3, 0, 1, 2).shape, dtype=torch.float32, device=frames.device)
    values.copy_(frames.permute(3, 0, 1, 2))
    if options.do_rescale:
        values.div_(1.0 / options.rescale_factor)  # divide: x / 255 differs from x * (1 / 255) in float32
    if options.do_normalize:
        values.sub_(torch.tensor(options.image_mean, dtype=torch.float32, device=values.device).view(-1, 1, 1, 1))
        values.div_(torch.tensor(options.image_std, dtype=torch.float32, device=values.device).view(-1, 1, 1, 1))
    return values


def _jitter_clips(clips: torch.Tensor, augmentation: _Augmentation, options: _Options) -> torch.Tensor:
    """Per-clip brightness then contrast (torchvision's functions, on pixels in [0, 1]) of normalized clips
    (views, clips, C, T, H, W); the result is normalized again."""
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(options.image_mean, dtype=clips.dtype, device=clips.device).view(shape)
    std = torch.tensor(options.image_std, dtype=clips.dtype, device=clips.device).view(shape)
    normalized = options.do_normalize
    out = torch.empty_like(clips)
    for index in range(clips.shape[1]):
        pixels = clips[:, index] * std + mean if normalized else clips[:, index]
        frames = pixels.transpose(1, 2)  # (views, T, C, H, W): torchvision's layout, contrast measured per frame
        if augmentation.brightness:
            frames = TF.adjust_brightness(frames, augmentation.brightness[index])
        if augmentation.contrast:
            frames = TF.adjust_contrast(frames, augmentation.contrast[index])
        pixels = frames.transpose(1, 2)
        out[:, index] = (pixels - mean) / std if normalized else pixels
    return out


def _gather_clips(views: list[torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """(C, U, H, W) per view and (clips, T) frame rows -> (views, clips, C, T, H, W), written in place once."""
    channels, _, height, width = views[0].shape
    clips, frames = positions.shape
    out = views[0].new_empty((len(views), clips, channels, frames, height, width))
    positions = positions.to(views[0].device)
    for view_index, values in enumerate(views):
        for clip_index, clip in enumerate(positions):
            torch.index_select(values, 1, clip, out=out[view_index, clip_index])
    return out


def _stack_batch(clips: list[torch.Tensor]) -> torch.Tensor:
    """(views, clips, C, T, H, W) per video -> (batch * views, clips, C, T, H, W), video-major."""
    shapes = {tuple(item.shape[1:]) for item in clips}
    if len(shapes) > 1:
        raise ValueError(f"videos of one batch must give clips of one shape, got {sorted(shapes)}; crop them")
    return clips[0] if len(clips) == 1 else torch.cat(clips)


def _metadata_from_info(info: VideoStreamInfo) -> VideoMetadata:
    return VideoMetadata(
        total_num_frames=info.num_frames,
        fps=info.fps,
        width=info.width,
        height=info.height,
        duration=info.duration,
        video_backend="pyav",
    )
