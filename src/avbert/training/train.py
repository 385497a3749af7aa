"""
`avbert-train`: fine-tune or linearly evaluate an AVBERT checkpoint with one of the original recipes.

    avbert-train --recipe ucf101 --data-dir UCF101 --model avbert-ucf101 --output-dir runs/ucf101 [--split-id 1]
                 [--layout folder] [any TrainingArguments flag, e.g. --bf16 --dataloader_num_workers 8]

`--train_shards` / `--eval_shards` read WebDataset shards written by `avbert-prepare shards` instead of the
`--data-dir` splits (local or streamed; docs/training.md, Scale-out). `--dataset_name` reads a `datasets` dataset
instead, as transformers' example scripts do (`--dataset_name videofolder --data_dir VIDEOS`, `--dataset_config_name`,
`--video_column_name`, `--audio_column_name`, `--label_column_name`, `--train_split_name`, `--eval_split_name`;
docs/training.md, "Training from a `datasets` dataset").

`--model` is a `save_pretrained` folder with its processor (e.g. written by `avbert-convert`). Recipe values fill the
`TrainingArguments` fields that are not given on the command line (`avbert-train --recipe NAME --help` shows them);
`--learning_rate` / `--weight_decay` / `--lr_scheduler_type` (cosine or linear) / `--adam_*` given explicitly change
the recipe's head lr, head weight decay, schedule and Adam settings; the Trainer's optimizer and warmup options are
refused (the recipe builds the original's optimizer). Multi-process: `torchrun --nproc_per_node N -m
avbert.training.train ...` (the recipe's batch sizes are global and are split over the processes; without an
accelerator the processes train data parallel on CPU). Exit status 0 on success, 1 with a one-line error, 143 after
SIGTERM (a checkpoint saved to resume from; docs/training.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# `--help` needs only the recipes and `TrainingArguments`: the model, data and `Trainer` modules are imported where
# they are used (docs/performance.md, start-up).
from transformers import HfArgumentParser, TrainingArguments

import avbert  # noqa: F401  (registers the AVBERT family with the Auto classes)

from ..cli import UsageError
from ..data.datasets_source import DATASET_HELP, Columns, as_splits, load_source, train_eval_rows
from .cli import (
    SHARD_READ_HELP,
    exit_status,
    launched_on_cpu_without_flag,
    refuse_single_process_accelerate_cpu,
    require_output_dir,
    resolve_resume,
)
from .heap import REUSE_FREED_MEMORY_HELP
from .recipes import (
    LR_POLICIES,
    RECIPES,
    Recipe,
    recipe_config_overrides,
    recipe_training_defaults,
)

if TYPE_CHECKING:
    from transformers import EvalPrediction, PreTrainedModel

logger = logging.getLogger(__name__)


@dataclass
class ModelDataArguments:
    """What to train and on which data (the rest of the command line is `TrainingArguments`)."""

    recipe: str = field(metadata={"help": f"Original recipe: {', '.join(RECIPES)}.", "choices": list(RECIPES)})
    model: str = field(metadata={"help": "save_pretrained folder (with its processor), e.g. from avbert-convert."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Dataset root folder (with --dataset_name: the folder the loader reads)."}
    )
    dataset_name: str | None = field(default=None, metadata={"help": DATASET_HELP["dataset_name"]})
    dataset_config_name: str | None = field(default=None, metadata={"help": DATASET_HELP["dataset_config_name"]})
    video_column_name: str = field(default="video", metadata={"help": DATASET_HELP["video_column_name"]})
    audio_column_name: str = field(default="audio", metadata={"help": DATASET_HELP["audio_column_name"]})
    label_column_name: str = field(default="label", metadata={"help": DATASET_HELP["label_column_name"]})
    train_shards: str | None = field(
        default=None,
        metadata={"help": "Shard manifests to train on instead of --data-dir's train split (docs/training.md)."},
    )
    eval_shards: str | None = field(
        default=None, metadata={"help": "Shard manifests to evaluate on instead of --data-dir's eval split."}
    )
    shuffle_buffer: int = field(default=1000, metadata={"help": "Samples per shard reader's shuffle buffer."})
    shard_timeout: float = field(default=60.0, metadata={"help": SHARD_READ_HELP["timeout"]})
    shard_retries: int = field(default=2, metadata={"help": SHARD_READ_HELP["retries"]})
    shard_max_member_size: str = field(default="1GiB", metadata={"help": SHARD_READ_HELP["max_member_size"]})
    layout: str | None = field(
        default=None,
        metadata={"help": "ucf101, esc50, kinetics-sounds, folder, csv or json (default: the recipe's own)."},
    )
    split_id: int = field(default=1, metadata={"help": "Official split / fold number (UCF101 1-3, ESC-50 1-5)."})
    train_split_name: str = field(
        default="train", metadata={"help": "Split name for training.", "aliases": ["--train_split"]}
    )
    eval_split_name: str = field(
        default="test",
        metadata={"help": "Split name for evaluation (the original tests on it).", "aliases": ["--eval_split"]},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep N training rows, every class in proportion (seeded by --seed)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep N eval rows, every class in proportion (seeded by --seed)."}
    )
    eval_only: bool = field(
        default=False,
        metadata={
            "help": "Only evaluate --model (TrainingArguments.do_eval is "
            "switched on by eval_strategy, so it cannot mean 'no training')."
        },
    )
    reuse_freed_memory: bool = field(default=True, metadata={"help": REUSE_FREED_MEMORY_HELP})


def explicit_flags(argv: Sequence[str]) -> set[str]:
    """Names (underscored) of the `--flags` present on the command line, so recipe values never override them."""
    names = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            names.add(name.removeprefix("no_"))
    return names


# Trainer options the recipe's own optimizer and schedule (AVBertTrainer) would silently ignore.
_REFUSED_UNDER_RECIPE = ("optim", "optim_args", "warmup_steps", "warmup_ratio", "lr_scheduler_kwargs")


def _recipe_values_help(parser: HfArgumentParser) -> None:
    """`--help` without `--recipe`: the TrainingArguments defaults (batch 8, 3 epochs) are used by no recipe, so the
    help lists each recipe's values for the fields recipes set instead."""
    per_recipe = {name: recipe_training_defaults(recipe) for name, recipe in RECIPES.items()}
    for action in parser._actions:
        if action.dest in per_recipe["ucf101"] and action.option_strings:
            values = ", ".join(f"{name} {defaults[action.dest]}" for name, defaults in per_recipe.items())
            action.help = f"{action.help or ''} Recipe values: {values}.".replace("%", "%%")
            action.default = argparse.SUPPRESS


def parse_args(argv: Sequence[str]) -> tuple[ModelDataArguments, TrainingArguments, Recipe]:
    """Parse the command line; the recipe's `TrainingArguments` values become the parser defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", choices=list(RECIPES))
    recipe_name = pre.parse_known_args(argv)[0].recipe
    parser = HfArgumentParser((ModelDataArguments, TrainingArguments), prog="avbert-train")
    require_output_dir(parser)
    passed = explicit_flags(argv)
    if recipe_name is not None:
        defaults = recipe_training_defaults(RECIPES[recipe_name])
        parser.set_defaults(**{k: v for k, v in defaults.items() if k not in passed})
    else:
        _recipe_values_help(parser)
    if launched_on_cpu_without_flag() and "use_cpu" not in passed:
        parser.set_defaults(use_cpu=True)  # torchrun / accelerate on CPU: join the process group (gloo)
    refused = sorted(passed & set(_REFUSED_UNDER_RECIPE))
    if refused:
        parser.error(
            f"{', '.join('--' + name for name in refused)}: the recipe builds the original's optimizer and schedule "
            "(Adam, no warmup); change the recipe in Python (dataclasses.replace) to experiment"
        )
    data_args, training_args = parser.parse_args_into_dataclasses(args=list(argv))
    recipe = RECIPES[data_args.recipe]
    changes: dict[str, Any] = {}
    if "learning_rate" in passed:
        changes["base_lr"] = training_args.learning_rate
    if "weight_decay" in passed:
        changes["weight_decay"] = training_args.weight_decay
    if "lr_scheduler_type" in passed:
        policy = str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type))
        if policy not in LR_POLICIES:
            parser.error(f"--lr_scheduler_type {policy}: the recipes' exact schedules are {', '.join(LR_POLICIES)}")
        changes["lr_policy"] = policy
    if "adam_epsilon" in passed:
        changes["adam_eps"] = training_args.adam_epsilon
    if passed & {"adam_beta1", "adam_beta2"}:
        changes["betas"] = (training_args.adam_beta1, training_args.adam_beta2)
    if changes:
        logger.info("Recipe %s overridden from the command line: %s", recipe.name, changes)
        recipe = dataclasses.replace(recipe, **changes)
    return data_args, training_args, recipe


def top_k_metrics() -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` with top-1 (`accuracy`, for `metric_for_best_model`) and top-5 accuracy, computed by the
    package's local `evaluate` module (works offline)."""
    from .evaluate import load_top_k_metric

    metric = load_top_k_metric()

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        scores = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        labels = np.asarray(prediction.label_ids).reshape(-1)
        result = metric.compute(predictions=scores, references=labels, k=(1, 5))
        return {"accuracy": float(result["top1_accuracy"]), "top5_accuracy": float(result["top5_accuracy"])}

    return compute


def load_model(model_dir: str, recipe: Recipe, class_names: list[str]) -> PreTrainedModel:
    """
    Load the classifier for the recipe's modality. When the dataset's classes differ from the checkpoint's labels,
    the heads are re-created (`ignore_mismatched_sizes=True` for a new class count; re-initialized for renamed
    classes), and id2label/label2id come from the dataset.
    """
    from transformers import AutoModelForAudioClassification, AutoModelForVideoClassification

    auto_class = AutoModelForAudioClassification if recipe.modality == "audio" else AutoModelForVideoClassification
    config = load_config(model_dir)
    saved_names = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else []
    overrides: dict[str, Any] = recipe_config_overrides(recipe)
    relabel = saved_names != class_names
    if relabel:
        logger.info("Dataset classes differ from the checkpoint's %d labels: new heads.", len(saved_names))
        # id2label sets num_labels; passing both makes transformers warn that they disagree with the saved map.
        overrides.update(
            id2label=dict(enumerate(class_names)),
            label2id={name: i for i, name in enumerate(class_names)},
        )
    model = auto_class.from_pretrained(model_dir, ignore_mismatched_sizes=True, **overrides)
    if relabel and len(saved_names) == len(class_names):
        _reinit_heads(model)
    if recipe.protocol == "linear_eval":
        model.freeze_encoder()
    return model


def load_config(model_dir: str) -> Any:
    """The model folder's config, or an error that says the folder is missing (not "couldn't connect to the Hub") or
    what is wrong with its config.json (AVBertConfig's own check: the Auto classes would ask to run the folder's code
    when its `model_type` is not "avbert")."""
    from ..configuration_avbert import AVBertConfig

    try:
        return AVBertConfig.from_pretrained(model_dir)
    except OSError as error:
        if not Path(model_dir).exists():
            raise UsageError(
                f"--model {model_dir}: no such folder (it takes a save_pretrained folder, e.g. from avbert-convert)"
            ) from error
        raise UsageError(f"--model {model_dir}: not a model folder ({error})") from error


def _reinit_heads(model: PreTrainedModel) -> None:
    """Give the heads fresh weights (same shapes, other classes): the saved ones scored different labels."""
    backbone = getattr(model, model.base_model_prefix)
    for name, child in model.named_children():
        if child is backbone:
            continue
        for param in child.parameters():
            param._is_hf_initialized = False
        logger.info("Re-initializing head %s.", name)
        child.apply(model._init_weights)


def load_processor(model_dir: str, recipe: Recipe) -> Any:
    """The AVBertProcessor (video recipes) or AVBertFeatureExtractor (audio recipe) saved with the model."""
    from transformers import AutoFeatureExtractor, AutoProcessor

    if recipe.modality == "audio":
        return AutoFeatureExtractor.from_pretrained(model_dir)
    return AutoProcessor.from_pretrained(model_dir)


def load_splits(
    data_args: ModelDataArguments, recipe: Recipe, seed: int, dataset: Any = None
) -> tuple[Any, Any, list[str]]:
    """The train and eval rows (None for a split read from shards) and the class names: the same classes in both
    splits, optionally a stratified subset of each. The rows come from ``dataset`` (a loaded ``Dataset`` /
    ``DatasetDict``: `datasets_source.train_eval_rows`), else ``--dataset_name``, else the ``--data_dir`` layout
    (whose splits must not share a file)."""
    from ..data.folders import stratified_subset

    shards = {"train": data_args.train_shards, "eval": data_args.eval_shards}
    if dataset is None and data_args.dataset_name is not None:
        dataset = load_source(data_args.dataset_name, data_args.dataset_config_name, data_args.data_dir)
    if dataset is not None:
        if any(shards.values()) or data_args.layout is not None:
            raise UsageError(
                "--layout, --train_shards and --eval_shards are for --data_dir folders and shards; a `datasets` "
                "dataset has its own columns and splits"
            )
        train, evaluation = train_eval_rows(
            as_splits(dataset, data_args.train_split_name),
            data_args.train_split_name,
            data_args.eval_split_name,
            Columns.of(data_args, recipe.modality),
        )
        rows, class_names = {"train": train, "eval": evaluation}, train.features["label"].names
    else:
        rows, class_names = _layout_splits(data_args, recipe, shards)
    for name, limit in (("train", data_args.max_train_samples), ("eval", data_args.max_eval_samples)):
        if rows[name] is not None and limit is not None:
            rows[name] = rows[name].select(stratified_subset(rows[name]["label"], limit, seed))
    return rows["train"], rows["eval"], class_names


def _layout_splits(
    data_args: ModelDataArguments, recipe: Recipe, shards: dict[str, str | None]
) -> tuple[dict[str, Any], list[str]]:
    """The rows of the ``--data_dir`` layout's splits, or None for a split read from shards, and the class names."""
    from ..data.folders import check_disjoint, load_media_dataset
    from ..data.shards import load_manifests, shard_read_options

    if data_args.data_dir is None and None in shards.values():
        raise UsageError("give --data_dir, --dataset_name, or both --train_shards and --eval_shards")
    if data_args.data_dir is not None and not Path(data_args.data_dir).exists():
        raise UsageError(f"--data_dir {data_args.data_dir}: no such folder or file")
    layout = data_args.layout or recipe.name
    split_names = {"train": data_args.train_split_name, "eval": data_args.eval_split_name}
    rows, class_names = {}, {}
    for name, split in split_names.items():
        if shards[name] is not None:
            manifest = load_manifests(shards[name], shard_read_options(data_args))
            rows[name], class_names[name] = None, manifest.class_names
            if class_names[name] is None:
                raise UsageError(f"the {name} shards {shards[name]} are unlabeled (written with --unlabeled)")
        else:
            rows[name] = load_media_dataset(layout, data_args.data_dir, split, data_args.split_id)
            class_names[name] = rows[name].features["label"].names
    if class_names["eval"] != class_names["train"]:
        raise UsageError(f"The {split_names['train']} and {split_names['eval']} splits have different classes.")
    if rows["train"] is not None and rows["eval"] is not None:
        check_disjoint(rows["train"], rows["eval"], split_names["train"], split_names["eval"])
    return rows, class_names["train"]


def run(argv: Sequence[str] | None = None, dataset: Any = None) -> dict[str, Any]:
    """Train, evaluate and save (model, processor, metrics, curves); returns the final eval metrics.

    ``dataset``: an already loaded ``datasets.DatasetDict`` (its ``--train_split_name`` / ``--eval_split_name``
    splits) or ``Dataset`` (the train split, a stratified part held out for evaluation) instead of ``--data_dir`` /
    ``--dataset_name``; the column flags apply to it.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    refuse_single_process_accelerate_cpu()
    data_args, training_args, recipe = parse_args(argv)

    from transformers import set_seed  # after parse_args: not for --help

    from ..data.shards import shard_dataset, shard_read_options
    from ..data.transform import AVBertDataCollator, MediaDataset, MediaTransform
    from .callbacks import ResumedScheduleCallback, SaveProcessorCallback, TrainingCurveCallback
    from .distributed import release_process_group
    from .shard_training import shard_trainer
    from .trainers import AVBertTrainer

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    set_seed(training_args.seed)
    load_config(data_args.model)  # a wrong --model is said before the data is listed
    train_rows, eval_rows, class_names = load_splits(data_args, recipe, training_args.seed, dataset)
    processor = load_processor(data_args.model, recipe)
    model = load_model(data_args.model, recipe, class_names)
    resume = None
    if not data_args.eval_only:
        resume = resolve_resume(
            training_args.resume_from_checkpoint, training_args.output_dir, training_args.process_index == 0
        )
    datasets = {}
    for split, rows, shards in (
        ("train", train_rows, data_args.train_shards),
        ("eval", eval_rows, data_args.eval_shards),
    ):
        # Frames leave the workers as uint8; the trainer normalizes them on the model's device.
        transform = MediaTransform(processor, recipe.modality, train=split == "train", defer_normalization=True)
        if rows is None:
            train = split == "train"
            options = shard_read_options(data_args)
            datasets[split] = shard_dataset(shards, transform, training_args, data_args.shuffle_buffer, train, options)
        else:
            datasets[split] = MediaDataset(rows, transform)

    # The callback saves the processor into every checkpoint. processing_class would too (AVBertProcessor answers the
    # Trainer's `tokenizer` read with NoTokenizer); the callback is kept because it saves the audio recipe's feature
    # extractor the same way and leaves every other Trainer behaviour as it was.
    trainer = shard_trainer(AVBertTrainer)(
        model=model,
        args=training_args,
        recipe=recipe,
        reuse_freed_memory=data_args.reuse_freed_memory,
        video_processor=getattr(processor, "video_processor", None),
        train_dataset=datasets["train"],
        eval_dataset=datasets["eval"],
        data_collator=AVBertDataCollator(report_skipped=True),
        compute_metrics=top_k_metrics(),
        callbacks=[TrainingCurveCallback(), ResumedScheduleCallback(resume), SaveProcessorCallback(processor)],
    )
    if not data_args.eval_only:
        train_result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        train_metrics = {**train_result.metrics, **trainer.skipped_files_metrics()}
        trainer.report_metrics("train", train_metrics)
        trainer.save_state()
    metrics = trainer.evaluate()
    metrics.update(trainer.skipped_files_metrics(prefix="eval_"))
    trainer.report_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
    del trainer, model
    release_process_group()
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """`avbert-train`: 0 when the run finished, 1 with a one-line error for a bad command line, data or a failed
    save, 143 when SIGTERM stopped it (after saving a checkpoint)."""
    return exit_status("avbert-train", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
