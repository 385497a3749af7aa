"""A plain `transformers.Trainer` whose checkpoints carry the AVBERT processor.

`Trainer(processing_class=processor)` is how transformers saves a processor with each checkpoint. In 5.24
`Trainer.train()` calls `align_special_tokens`, which reads `processing_class.tokenizer` of every `ProcessorMixin`; a
processor without a tokenizer (transformers' own SAM 2 ones too) has none. `AVBertProcessor.tokenizer` answers with
`NoTokenizer` (no special tokens), so the plain Trainer works; `test_the_limit_is_transformers_own` turns red the day
transformers no longer needs it (then drop `NoTokenizer`). `SaveProcessorCallback` does the same for trainers built
without `processing_class`.
"""

from pathlib import Path

import pytest
from test_training_recipes import TINY, RandomClips
from transformers import AutoModelForVideoClassification, AutoProcessor, Trainer, TrainingArguments
from transformers.trainer_utils import align_special_tokens

from avbert import AVBertConfig, AVBertForVideoClassification, AVBertProcessor
from avbert.training.callbacks import SaveProcessorCallback


def tiny_processor() -> AVBertProcessor:
    processor = AVBertProcessor()
    processor.video_processor.num_clips = TINY["num_clips"]
    processor.video_processor.num_frames = TINY["num_frames"]
    return processor


def plain_trainer(output_dir: Path, **kwargs: object) -> Trainer:
    # Default TrainingArguments but for what a two-step CPU run needs: `remove_unused_columns` keeps its default.
    args = TrainingArguments(output_dir=str(output_dir), max_steps=2, save_steps=1, use_cpu=True, report_to=[])
    model = AVBertForVideoClassification(AVBertConfig(**TINY))
    return Trainer(model=model, args=args, train_dataset=RandomClips(4), **kwargs)


def test_plain_trainer_checkpoints_carry_the_processor(tmp_path: Path) -> None:
    processor = tiny_processor()
    plain_trainer(tmp_path, callbacks=[SaveProcessorCallback(processor)]).train()

    for step in (1, 2):
        checkpoint = tmp_path / f"checkpoint-{step}"
        loaded = AutoProcessor.from_pretrained(checkpoint)
        assert isinstance(loaded, AVBertProcessor)
        assert loaded.to_dict() == processor.to_dict()
        assert isinstance(AutoModelForVideoClassification.from_pretrained(checkpoint), AVBertForVideoClassification)


def test_trainer_processing_class(tmp_path: Path) -> None:
    processor = tiny_processor()
    plain_trainer(tmp_path, processing_class=processor).train()
    for step in (1, 2):
        assert AutoProcessor.from_pretrained(tmp_path / f"checkpoint-{step}").to_dict() == processor.to_dict()


def test_the_stand_in_tokenizer_says_there_is_none() -> None:
    with pytest.raises(AttributeError, match="has no tokenizer"):
        tiny_processor().tokenizer.decode([1, 2])
    with pytest.raises(ValueError, match="AVBertProcessor needs"):
        tiny_processor()()  # the processor's own checks are unchanged


def test_the_limit_is_transformers_own() -> None:
    """transformers' own tokenizer-less processors still fail, so `AVBertProcessor.tokenizer` is still needed; when this
    fails, transformers handles tokenizer-less processors itself: remove `NoTokenizer`."""
    from transformers import Sam2ImageProcessor, Sam2Processor

    processor = Sam2Processor(image_processor=Sam2ImageProcessor())
    with pytest.raises(AttributeError, match="tokenizer"):
        align_special_tokens(AVBertForVideoClassification(AVBertConfig(**TINY)), processor)
