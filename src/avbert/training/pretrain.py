"""
`avbert-pretrain`: self-supervised pretraining of AVBERT (`AVBertForPreTraining`) on a folder of unlabeled videos.

    avbert-pretrain --data-dir VIDEOS --output-dir runs/pretrain [--model FOLDER] [--config-overrides JSON]
                    [--num_clips 30] [any TrainingArguments flag, e.g. --bf16 --per_device_train_batch_size 8]

`--dataset_name` reads the videos of a `datasets` dataset instead (`--dataset_name videofolder --data-dir VIDEOS`,
`--dataset_config_name`, `--video_column_name`, `--train_split_name`; docs/training.md). `--shards MANIFESTS` reads
WebDataset shards written by `avbert-prepare shards --unlabeled` instead (local or streamed, split over ranks and
DataLoader workers, resumable sample for sample; docs/training.md, Scale-out).
Every media file under `--data-dir` (recursive; any container FFmpeg reads, text and image files left out and
reported) is one training item: a sequence of
`num_clips` uniformly spaced clips (default 30: the paper's 30-second inputs) with the sound under each clip.
Files without a sound track or that cannot be decoded are reported and skipped. `--model` continues from a
`save_pretrained` folder; otherwise a new `AVBertConfig(**config_overrides)` model is built. The losses (masked
embedding prediction in the visual, audio and multimodal stages, correct pair prediction) are logged separately.
The optimizer is the `Trainer`'s (AdamW with the `TrainingArguments` values): the paper's pretraining optimizer is
not known here. `--resume_from_checkpoint true` continues an interrupted run from the newest checkpoint. The output
folder holds the pretraining model and the processor; `AVBertForVideoClassification.from_pretrained(OUT)` and
`AVBertForAudioClassification.from_pretrained(OUT)` start classifiers from it (new heads).

Training augmentation: the fine-tuning one (random scale, crop and flip per video, SpecAugment) plus, by default,
an independent brightness, contrast and sound-gain jitter per clip (`--clip_brightness_jitter 0.4
--clip_contrast_jitter 0.4 --clip_gain_jitter_db 6`; 0 turns each off). Without it, masked embedding prediction can
pick out a clip's own video by its overall brightness or loudness, and learns that instead of content (measured in
`benchmarks/bench_pretraining.py`). The jitter is used at pretraining time only; the saved processor has none.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# `--help` needs only `TrainingArguments`: the model, processing, data (`datasets`, `webdataset`) and `Trainer`
# modules are imported where they are used (docs/performance.md, start-up).
from transformers import HfArgumentParser, TrainingArguments

from ..cli import UsageError
from ..data.datasets_source import DATASET_HELP, Columns, as_splits, load_source, split_rows
from .cli import (
    SHARD_READ_HELP,
    exit_status,
    has_accelerator,
    launched_on_cpu_without_flag,
    refuse_single_process_accelerate_cpu,
    require_output_dir,
    resolve_resume,
)
from .heap import REUSE_FREED_MEMORY_HELP

if TYPE_CHECKING:
    from datasets import Dataset

    from ..configuration_avbert import AVBertConfig
    from ..modeling_avbert import AVBertForPreTraining
    from ..processing_avbert import AVBertProcessor

logger = logging.getLogger(__name__)

DEFAULT_NUM_CLIPS = 30
# Default per-clip jitter of pretraining (processor call arguments; see the module docstring).
CLIP_JITTER = {"clip_brightness_jitter": 0.4, "clip_contrast_jitter": 0.4, "clip_gain_jitter_db": 6.0}


@dataclass
class PretrainArguments:
    """What to pretrain and on which videos (the rest of the command line is `TrainingArguments`)."""

    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of unlabeled videos with sound (searched recursively; with --dataset_name: the folder "
            "the loader reads)."
        },
    )
    shards: str | None = field(
        default=None,
        metadata={
            "help": "Instead of --data-dir: shard manifests (folders, manifest.json files or URLs; comma-separated, "
            "brace patterns, local globs) written by `avbert-prepare shards` (docs/training.md, Scale-out)."
        },
    )
    shuffle_buffer: int = field(default=1000, metadata={"help": "Samples per shard reader's shuffle buffer."})
    shard_timeout: float = field(default=60.0, metadata={"help": SHARD_READ_HELP["timeout"]})
    shard_retries: int = field(default=2, metadata={"help": SHARD_READ_HELP["retries"]})
    shard_max_member_size: str = field(default="1GiB", metadata={"help": SHARD_READ_HELP["max_member_size"]})
    dataset_name: str | None = field(default=None, metadata={"help": DATASET_HELP["dataset_name"]})
    dataset_config_name: str | None = field(default=None, metadata={"help": DATASET_HELP["dataset_config_name"]})
    video_column_name: str = field(default="video", metadata={"help": DATASET_HELP["video_column_name"]})
    train_split_name: str = field(default="train", metadata={"help": "The dataset's split to pretrain on."})
    model: str | None = field(
        default=None, metadata={"help": "save_pretrained folder to continue from (default: a new model)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON dict of AVBertConfig fields for a new model, e.g. '{\"hidden_size\": 256}'."},
    )
    num_clips: int | None = field(
        default=None,
        metadata={"help": f"Clips per video (default {DEFAULT_NUM_CLIPS} for a new model, else the saved config's)."},
    )
    short_side: int = field(default=128, metadata={"help": "Frame short side (training jitter: x1 to x1.25)."})
    crop_size: int = field(default=112, metadata={"help": "Side of the random square training crop."})
    clip_brightness_jitter: float = field(
        default=CLIP_JITTER["clip_brightness_jitter"],
        metadata={"help": "Per-clip brightness factor range 1 +- this (0: off); see docs/pretraining.md for why."},
    )
    clip_contrast_jitter: float = field(
        default=CLIP_JITTER["clip_contrast_jitter"], metadata={"help": "Per-clip contrast factor range 1 +- this."}
    )
    clip_gain_jitter_db: float = field(
        default=CLIP_JITTER["clip_gain_jitter_db"], metadata={"help": "Per-clip sound gain range +- this many dB."}
    )
    reuse_freed_memory: bool = field(default=True, metadata={"help": REUSE_FREED_MEMORY_HELP})

    def augmentation(self) -> dict[str, float]:
        """The per-clip jitter, passed to the processor at training time only (it is not saved with it)."""
        return {key: getattr(self, key) for key in CLIP_JITTER}


def build_model(args: PretrainArguments) -> AVBertForPreTraining:
    """A new model from `AVBertConfig(**config_overrides)`, or the `--model` folder, with `num_clips` applied."""
    from ..configuration_avbert import AVBertConfig
    from ..modeling_avbert import AVBertForPreTraining

    overrides: dict[str, Any] = json.loads(args.config_overrides) if args.config_overrides else {}
    if not isinstance(overrides, dict):
        raise ValueError(f"--config-overrides must be a JSON object, got {args.config_overrides!r}")
    if args.model is not None:
        model = AVBertForPreTraining.from_pretrained(args.model, **overrides)
        if args.num_clips is not None:
            if args.num_clips + 1 > model.config.max_position_embeddings:
                raise ValueError(
                    f"--num_clips {args.num_clips} needs max_position_embeddings >= {args.num_clips + 1}, but the "
                    f"model in {args.model} has {model.config.max_position_embeddings}."
                )
            model.config.num_clips = args.num_clips
        return model
    num_clips = args.num_clips or overrides.get("num_clips", DEFAULT_NUM_CLIPS)
    overrides["num_clips"] = num_clips
    overrides.setdefault("max_position_embeddings", num_clips + 1)
    return AVBertForPreTraining(AVBertConfig(**overrides))


def build_processor(config: AVBertConfig, args: PretrainArguments) -> AVBertProcessor:
    """Frames and sound of `config.num_clips` clips of `config.num_frames` frames; the sound window is one clip."""
    from ..feature_extraction_avbert import AVBertFeatureExtractor
    from ..processing_avbert import AVBertProcessor
    from ..video_processing_avbert import AVBertVideoProcessor

    video_processor = AVBertVideoProcessor(
        num_clips=config.num_clips,
        num_frames=config.num_frames,
        size={"shortest_edge": args.short_side},
        crop_size={"height": args.crop_size, "width": args.crop_size},
        train_jitter_scales=(args.short_side, args.short_side * 5 // 4),
        train_crop_size=args.crop_size,
        load_audio_in_video=True,
    )
    clip_seconds = config.num_frames * video_processor.frame_sampling_rate / video_processor.target_fps
    feature_extractor = AVBertFeatureExtractor(
        num_clips=config.num_clips,
        feature_size=config.num_mel_bins,
        num_time_frames=config.audio_num_frames,
        clip_samples=round(44100 * clip_seconds),
    )
    return AVBertProcessor(feature_extractor=feature_extractor, video_processor=video_processor)


def parse_args(argv: Sequence[str]) -> tuple[PretrainArguments, TrainingArguments]:
    parser = HfArgumentParser((PretrainArguments, TrainingArguments), prog="avbert-pretrain", description=__doc__)
    require_output_dir(parser)
    # Pretraining defaults; explicit flags win (no labels: keep every column and pass no label_names).
    parser.set_defaults(
        save_strategy="epoch",
        save_total_limit=2,
        logging_steps=10,
        remove_unused_columns=False,
        label_names=[],
        dataloader_pin_memory=has_accelerator(),  # torch warns each epoch about pinning without an accelerator
    )
    if launched_on_cpu_without_flag() and not any(token.startswith(("--use_cpu", "--use-cpu")) for token in argv):
        parser.set_defaults(use_cpu=True)  # torchrun / accelerate on CPU: join the process group (gloo)
    pretrain_args, training_args = parser.parse_args_into_dataclasses(args=list(argv))
    training_args.remove_unused_columns = False
    training_args.label_names = []
    return pretrain_args, training_args


def unlabeled_rows(args: PretrainArguments, dataset: Any = None) -> Dataset:
    """The `path` rows to pretrain on: `--train_split_name` of `dataset` (loaded already) or `--dataset_name` (its
    labels, if any, unused), else the media files under `--data-dir`."""
    if dataset is None and args.dataset_name is not None:
        dataset = load_source(args.dataset_name, args.dataset_config_name, args.data_dir)
    if dataset is None:
        from ..data.folders import unlabeled_dataset

        return unlabeled_dataset(args.data_dir)
    columns = Columns.of(args, "audio-visual", labeled=False)
    return split_rows(as_splits(dataset, args.train_split_name), args.train_split_name, "train_split_name", columns)


def run(argv: Sequence[str] | None = None, dataset: Any = None) -> dict[str, Any]:
    """Pretrain and save model + processor to `--output-dir`; returns the training metrics.

    `dataset`: an already loaded `datasets.DatasetDict` (its `--train_split_name` split) or `Dataset` instead of
    `--data-dir` / `--dataset_name`; `--video_column_name` names its video column.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    refuse_single_process_accelerate_cpu()
    args, training_args = parse_args(argv)
    from transformers import set_seed  # after parse_args: not for --help

    from ..data.shards import shard_dataset, shard_read_options
    from ..data.transform import MediaDataset, MediaTransform
    from .callbacks import ResumedScheduleCallback, SaveProcessorCallback
    from .distributed import release_process_group
    from .shard_training import shard_trainer
    from .trainers import PreTrainer, PretrainingCollator

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    set_seed(training_args.seed)
    from_datasets = dataset is not None or args.dataset_name is not None
    if from_datasets and args.shards is not None:
        raise UsageError("give a `datasets` dataset or --shards (shard manifests), not both")
    if not from_datasets and (args.data_dir is None) == (args.shards is None):
        raise UsageError(
            "give exactly one of --data-dir (a folder of videos), --dataset_name (a `datasets` dataset) and "
            "--shards (shard manifests)"
        )
    model = build_model(args)
    processor = build_processor(model.config, args)
    # Frames leave the workers as uint8; the trainer normalizes (and jitters) them on the model's device.
    transform = MediaTransform(
        processor, "audio-visual", train=True, augmentation=args.augmentation(), defer_normalization=True
    )
    if args.shards is not None:
        options = shard_read_options(args)
        media = shard_dataset(args.shards, transform, training_args, args.shuffle_buffer, options=options)
    else:
        media = MediaDataset(unlabeled_rows(args, dataset), transform)
    logger.info(
        "Pretraining on %d files, %d clips x %d frames, %s parameters",
        len(media),
        model.config.num_clips,
        model.config.num_frames,
        f"{sum(p.numel() for p in model.parameters()):,}",
    )
    resume = resolve_resume(
        training_args.resume_from_checkpoint, training_args.output_dir, training_args.process_index == 0
    )
    # No processing_class: Trainer.train() in 5.24 reads processing_class.tokenizer (saved by the callback instead).
    trainer = shard_trainer(PreTrainer)(
        model=model,
        args=training_args,
        reuse_freed_memory=args.reuse_freed_memory,
        video_processor=processor.video_processor,
        train_dataset=media,
        data_collator=PretrainingCollator(report_skipped=True),
        callbacks=[ResumedScheduleCallback(resume), SaveProcessorCallback(processor)],
    )
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    metrics = {**result.metrics, **trainer.skipped_files_metrics()}
    trainer.report_metrics("train", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
    del trainer, model
    release_process_group()
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """`avbert-pretrain`: 0 when the run finished, 1 with a one-line error for a bad command line, data or a failed
    save, 143 when SIGTERM stopped it (after saving a checkpoint)."""
    return exit_status("avbert-pretrain", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
