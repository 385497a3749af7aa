"""AVBERT processor: one call turns a media file (or frames and a waveform) into `pixel_values` and `input_features`."""

from typing import Any

import numpy as np
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import AudioKwargs, ProcessingKwargs, ProcessorMixin, Unpack

from .feature_extraction_avbert import AVBertFeatureExtractor
from .feature_extraction_avbert import _is_batch as _is_audio_batch
from .media_decoding import is_media_source
from .video_processing_avbert import AVBertVideoProcessor, AVBertVideoProcessorKwargs


class AVBertAudioKwargs(AudioKwargs, total=False):
    """Arguments of :meth:`AVBertFeatureExtractor.__call__` on top of transformers' ``AudioKwargs``.

    clip_starts: start time in seconds of every window (default: spread uniformly, the original's rule).
    num_clips: windows per waveform; with frames it defaults to the video's clip count.
    apply_masking: training-time frequency and time masks.
    clip_gain_jitter_db: training-time per-window gain, uniform in +-this many dB.
    """

    clip_starts: Any
    num_clips: int | None
    apply_masking: bool | None
    clip_gain_jitter_db: int | float | None


class AVBertProcessorKwargs(ProcessingKwargs, total=False):
    videos_kwargs: AVBertVideoProcessorKwargs
    audio_kwargs: AVBertAudioKwargs


class AVBertProcessor(ProcessorMixin):
    r"""
    Wraps an [`AVBertVideoProcessor`] and an [`AVBertFeatureExtractor`].

    - `processor(videos=path)`: the file is opened and decoded once (PyAV): the sampled frames of every clip and the
      sound track, whose window under each clip is placed by the clip's timestamp (`audio_alignment="fraction"`
      reproduces the original's proportional placement). Returns `pixel_values` (batch, clips, 3, frames, H, W) and
      `input_features` (batch, clips, 1, mel, time). A file without an audio stream raises `MediaDecodeError`; pass
      `load_audio_in_video=False` for the frames alone.
    - `processor(videos=frames, audio=waveform, sampling_rate=sr)`: decoded inputs; one audio window per clip, placed
      as `audio_alignment` says (see [`AVBertVideoProcessor.audio_clip_starts`]).
    - `processor(audio=waveform, sampling_rate=sr)`: log-mels only.

    Keyword arguments are routed per modality as in transformers' processors: flat ones go to every component that
    declares them (`num_clips`, `spatial_crop`, `all_views`, `do_train_augmentation`, `seed`, ... to the video
    processor; `sampling_rate`, `clip_starts`, `apply_masking` to the feature extractor), nested ones as
    `videos_kwargs={...}` / `audio_kwargs={...}`. With `do_train_augmentation` the log-mels of a file get the training
    masks too.
    """

    valid_processor_kwargs = AVBertProcessorKwargs

    def __init__(
        self,
        feature_extractor: AVBertFeatureExtractor | None = None,
        video_processor: AVBertVideoProcessor | None = None,
        **kwargs: Any,
    ) -> None:
        # The signature says both are optional: the defaults are the original's Kinetics-Sounds setting.
        super().__init__(
            feature_extractor if feature_extractor is not None else AVBertFeatureExtractor(),
            video_processor if video_processor is not None else AVBertVideoProcessor(),
            **kwargs,
        )

    def __call__(self, videos: Any = None, audio: Any = None, **kwargs: Unpack[AVBertProcessorKwargs]) -> BatchFeature:
        if videos is None and audio is None:
            raise ValueError("AVBertProcessor needs `videos`, `audio`, or both.")
        output_kwargs = self._merge_kwargs(AVBertProcessorKwargs, **kwargs)
        video_kwargs, audio_kwargs = output_kwargs["videos_kwargs"], output_kwargs["audio_kwargs"]
        return_tensors = video_kwargs.pop("return_tensors", None) or audio_kwargs.pop("return_tensors", None)
        audio_kwargs.pop("return_tensors", None)
        data: dict[str, Any] = {}
        if videos is not None:
            items = videos if isinstance(videos, list | tuple) else [videos]
            # Unlike the video processor alone, the processor reads the sound of a file unless told not to.
            from_file = video_kwargs.get("load_audio_in_video", True) is not False and audio is None
            from_file = from_file and all(is_media_source(item) for item in items)
            video_kwargs["load_audio_in_video"] = from_file
            video_kwargs["audio_feature_extractor"] = self.feature_extractor if from_file else None
            wants_metadata = bool(video_kwargs.get("return_metadata"))
            video_kwargs["return_metadata"] = True
            data.update(self.video_processor(videos, return_tensors="pt", **video_kwargs))
            metadata = data["video_metadata"] if wants_metadata else data.pop("video_metadata")
        if audio is not None:
            if "pixel_values" in data:
                audio_kwargs.setdefault("num_clips", data["pixel_values"].shape[1])
                sampled = video_kwargs.get("do_sample_frames", self.video_processor.do_sample_frames) is not False
                if "clip_starts" not in audio_kwargs and sampled:  # already-sampled frames carry no clip timing
                    audio_kwargs["clip_starts"] = self._audio_clip_starts(metadata, audio, audio_kwargs, video_kwargs)
            data.update(self.feature_extractor(audio, return_tensors="pt", **audio_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _audio_clip_starts(
        self, metadata: list[Any], audio: Any, audio_kwargs: dict[str, Any], video_kwargs: dict[str, Any]
    ) -> list[np.ndarray]:
        """Window starts for frames and waveforms given apart, placed as for the same file (``audio_alignment``)."""
        waveforms = audio if _is_audio_batch(audio) else [audio]
        if len(waveforms) != len(metadata):
            raise ValueError(f"got {len(metadata)} videos but {len(waveforms)} waveforms")
        rate = audio_kwargs.get("sampling_rate") or self.feature_extractor.sampling_rate
        extractor = self.feature_extractor
        return [
            self.video_processor.audio_clip_starts(
                item.total_num_frames,
                item.fps,
                audio_duration=np.shape(waveform)[-1] / rate,
                clip_seconds=extractor.clip_samples / extractor.sampling_rate,
                **video_kwargs,
            )
            for item, waveform in zip(metadata, waveforms, strict=True)
        ]

    def save_pretrained(self, save_directory: Any, push_to_hub: bool = False, **kwargs: Any) -> Any:
        """As the base; the ``auto_map`` it sets on the instance to write the remote-code entry is removed again (as
        transformers does for tokenizers), so a saved, a loaded and a freshly built processor compare equal."""
        had_auto_map = "auto_map" in self.__dict__
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            if not had_auto_map:
                self.__dict__.pop("auto_map", None)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_features"]


__all__ = ["AVBertAudioKwargs", "AVBertProcessor", "AVBertProcessorKwargs"]
