"""AVBERT processor: a media file (or frames and a waveform) -> ``pixel_values`` and ``input_features``.

It composes the two processors and routes each modality's keyword arguments. For files the video processor gives
the frames and, from the feature extractor, the log-mel of the sound under each sampled clip
(``AVBertVideoProcessor.preprocess_with_sound``, which the stock pipeline reaches too); for frame and waveform arrays
the processor places one window per clip on the waveform.
"""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack

from .feature_extraction_avbert import AVBertAudioKwargs, AVBertFeatureExtractor
from .feature_extraction_avbert import _is_batch as _is_audio_batch
from .media_decoding import is_media_source
from .video_processing_avbert import AVBertVideoProcessor, AVBertVideoProcessorKwargs


class AVBertProcessorKwargs(ProcessingKwargs, total=False):
    videos_kwargs: AVBertVideoProcessorKwargs
    audio_kwargs: AVBertAudioKwargs


class NoTokenizer:
    """What :attr:`AVBertProcessor.tokenizer` answers: AVBERT reads no text, so there are no special tokens.

    transformers 5.24's ``Trainer.train()`` reads ``processing_class.tokenizer`` of every ``ProcessorMixin``
    (``align_special_tokens``) and takes its ``bos`` / ``eos`` / ``pad`` token ids, which are None here: nothing to
    align, as for a tokenizer that defines none. So ``Trainer(processing_class=processor)`` trains and saves the
    processor with every checkpoint. Anything else asked of it says there is no tokenizer.
    (tests/test_trainer_processor.py::test_the_limit_is_transformers_own turns red when transformers stops needing it.)
    """

    bos_token_id = None
    eos_token_id = None
    pad_token_id = None
    init_kwargs: Mapping[str, Any] = MappingProxyType({})  # ProcessorMixin._merge_kwargs reads it when present

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"AVBertProcessor has no tokenizer (AVBERT reads no text), so no {name!r}")


class AVBertProcessor(ProcessorMixin):
    r"""
    Wraps an [`AVBertVideoProcessor`] and an [`AVBertFeatureExtractor`].

    - `processor(videos=path)`: the sampled frames of every clip and the log-mel of the sound under each clip, its
      window placed by the clip's presentation time (`audio_alignment="fraction"`: the original's proportional
      placement). Returns `pixel_values` (batch, clips, 3, frames, H, W) and `input_features` (batch, clips, 1, mel,
      time); with `all_views` every crop row hears its video's sound. A file without an audio stream raises
      `MediaDecodeError`; `load_audio_in_video=False` gives the frames alone.
    - `processor(videos=frames, audio=waveform, sampling_rate=sr)`: decoded inputs; one window per clip, placed as for
      the file whose streams both start at 0.
    - `processor(audio=waveform, sampling_rate=sr)`: log-mels only.

    Keyword arguments are routed per modality with `ProcessingKwargs`: flat ones go to the component that declares them,
    nested ones as `videos_kwargs={...}` / `audio_kwargs={...}`.
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
        self.video_processor.belong_to(self)

    def __call__(self, videos: Any = None, audio: Any = None, **kwargs: Unpack[AVBertProcessorKwargs]) -> BatchFeature:
        if videos is None and audio is None:
            raise ValueError("AVBertProcessor needs `videos`, `audio`, or both.")
        output_kwargs = self._merge_kwargs(AVBertProcessorKwargs, **kwargs)
        video_kwargs, audio_kwargs = output_kwargs["videos_kwargs"], output_kwargs["audio_kwargs"]
        return_tensors = video_kwargs.pop("return_tensors", None) or audio_kwargs.pop("return_tensors", None)
        audio_kwargs.pop("return_tensors", None)
        alignment = audio_kwargs.pop("audio_alignment", None) or self.feature_extractor.audio_alignment
        if videos is None:
            return BatchFeature(self.feature_extractor(audio, return_tensors="pt", **audio_kwargs), return_tensors)

        items = list(videos) if isinstance(videos, list | tuple) else [videos]
        # Unlike the video processor alone, the processor reads the sound of files unless told not to (or the model
        # saved beside it is visual-only: `AVBertVideoProcessor.reads_sound`).
        load_audio = video_kwargs.pop("load_audio_in_video", None)
        wants_metadata = bool(video_kwargs.pop("return_metadata", False))
        if audio is None and all(map(is_media_source, items)) and self.video_processor.reads_sound(load_audio, True):
            audio_kwargs["audio_alignment"] = alignment
            data = self.video_processor.preprocess_with_sound(
                videos, self.feature_extractor, video_kwargs, audio_kwargs, wants_metadata
            )
            return BatchFeature(data=data, tensor_type=return_tensors)
        video_kwargs["load_audio_in_video"] = False
        data = dict(self.video_processor(videos, return_metadata=True, return_tensors="pt", **video_kwargs))
        metadata = data["video_metadata"] if wants_metadata else data.pop("video_metadata")
        sampling = self.video_processor.clip_sampling(**video_kwargs)
        rows = data["pixel_values"].shape[0] // len(metadata)  # 3 with all_views: each crop hears the same sound
        if audio is not None:
            audio_kwargs["num_clips"] = len(sampling.selected_clips)
            sampled = video_kwargs.get("do_sample_frames", self.video_processor.do_sample_frames) is not False
            if "clip_starts" not in audio_kwargs and sampled:  # already-sampled frames carry no clip timing
                # Placed as for a file whose streams start at 0: frame arrays carry no presentation times.
                waveforms = audio if _is_audio_batch(audio) else [audio]
                if len(waveforms) != len(metadata):
                    raise ValueError(f"got {len(metadata)} videos but {len(waveforms)} waveforms")
                rate = audio_kwargs.get("sampling_rate") or self.feature_extractor.sampling_rate
                audio_kwargs["clip_starts"] = [
                    self.feature_extractor.window_starts(
                        sampling, item, alignment, audio_duration=np.shape(waveform)[-1] / rate
                    )
                    for item, waveform in zip(metadata, waveforms, strict=True)
                ]
            features = self.feature_extractor(audio, return_tensors="pt", **audio_kwargs)["input_features"]
            data["input_features"] = features.repeat_interleave(rows, dim=0)
        return BatchFeature(data=data, tensor_type=return_tensors)

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
    def tokenizer(self) -> NoTokenizer:
        """No tokenizer: special tokens None (see :class:`NoTokenizer`), for transformers' ``Trainer``."""
        return NoTokenizer()

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_features"]


__all__ = ["AVBertProcessor", "AVBertProcessorKwargs"]
