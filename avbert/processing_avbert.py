"""AVBERT processor: one call turns a media file (or frames and a waveform) into `pixel_values` and `input_features`."""

from typing import Any

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .feature_extraction_avbert import AVBertFeatureExtractor
from .media_decoding import is_media_source
from .video_processing_avbert import AVBertVideoProcessor

# Arguments of the feature extractor's `__call__`; every other keyword goes to the video processor.
_AUDIO_KWARGS = ("clip_starts", "apply_masking", "clip_gain_jitter_db")


class AVBertProcessor(ProcessorMixin):
    r"""
    Wraps an [`AVBertVideoProcessor`] and an [`AVBertFeatureExtractor`].

    - `processor(videos=path)`: the file is opened and decoded once (PyAV): the sampled frames of every clip and the
      sound track, whose window under each clip is placed by the clip's timestamp (`audio_alignment="fraction"`
      reproduces the original's proportional placement). Returns `pixel_values` (batch, clips, 3, frames, H, W) and
      `input_features` (batch, clips, 1, mel, time). A file without an audio stream raises `MediaDecodeError`; pass
      `load_audio_in_video=False` for the frames alone.
    - `processor(videos=frames, audio=waveform, sampling_rate=sr)`: decoded inputs; the audio windows are spread
      uniformly over the waveform, one per clip.
    - `processor(audio=waveform, sampling_rate=sr)`: log-mels only.

    Video keyword arguments (`num_clips`, `spatial_crop`, `all_views`, `do_train_augmentation`, `seed`, ...) go to
    the video processor; `clip_starts` and `apply_masking` to the feature extractor. With `do_train_augmentation` the
    log-mels of a file get the training masks too.
    """

    def __init__(
        self,
        feature_extractor: AVBertFeatureExtractor | None = None,
        video_processor: AVBertVideoProcessor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(feature_extractor, video_processor, **kwargs)

    def __call__(
        self,
        videos: Any = None,
        audio: Any = None,
        sampling_rate: int | None = None,
        load_audio_in_video: bool = True,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        if videos is None and audio is None:
            raise ValueError("AVBertProcessor needs `videos`, `audio`, or both.")
        audio_kwargs = {key: kwargs.pop(key) for key in _AUDIO_KWARGS if key in kwargs}
        data: dict[str, Any] = {}
        if videos is not None:
            items = videos if isinstance(videos, list | tuple) else [videos]
            from_file = load_audio_in_video and audio is None and all(is_media_source(item) for item in items)
            if from_file and "clip_gain_jitter_db" in audio_kwargs:  # the sound track's log-mels come from there
                kwargs["clip_gain_jitter_db"] = audio_kwargs.pop("clip_gain_jitter_db")
            data.update(
                self.video_processor(
                    videos,
                    load_audio_in_video=from_file,
                    audio_feature_extractor=self.feature_extractor if from_file else None,
                    return_tensors="pt",
                    **kwargs,
                )
            )
        if audio is not None:
            if "pixel_values" in data:
                audio_kwargs.setdefault("num_clips", data["pixel_values"].shape[1])
            data.update(self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors="pt", **audio_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_features"]


__all__ = ["AVBertProcessor"]
