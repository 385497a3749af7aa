"""
`avbert-train`: fine-tune or linearly evaluate an AVBERT checkpoint with one of the original recipes.

    avbert-train --recipe ucf101 --data-dir UCF101 --model avbert-ucf101 --output-dir runs/ucf101 [--split-id 1]
                 [--layout folder] [any TrainingArguments flag, e.g. --bf16 --dataloader_num_workers 8]

`--train_shards` / `--eval_shards` read WebDataset shards written by `avbert-prepare shards` instead of the
`--data-dir` splits (local or streamed; docs/training.md, Scale-out).

`--model` is a `save_pretrained` folder with its processor (e.g. written by `avbert-convert`). Recipe values fill the
`TrainingArguments` fields that are not given on the command line; `--learning_rate` / `--weight_decay` given
explicitly change the recipe's head lr / head weight decay. Multi-process: `torchrun --nproc_per_node N -m
avbert.training.train ...` (the recipe's batch sizes are global and are split over the processes).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
    AutoModelForVideoClassification,
    AutoProcessor,
    EvalPrediction,
    HfArgumentParser,
    PreTrainedModel,
    TrainingArguments,
    set_seed,
)

import avbert  # noqa: F401  (registers the AVBERT family with the Auto classes)

from .callbacks import TrainingCurveCallback
from .data import AVBertDataCollator, MediaTransform, load_media_dataset
from .distributed import release_process_group
from .evaluate import load_top_k_metric
from .recipes import RECIPES, AVBertTrainer, Recipe, recipe_config_overrides, recipe_training_defaults
from .shards import load_manifests, shard_dataset, shard_trainer

logger = logging.getLogger(__name__)


@dataclass
class ModelDataArguments:
    """What to train and on which data (the rest of the command line is `TrainingArguments`)."""

    recipe: str = field(metadata={"help": f"Original recipe: {', '.join(RECIPES)}.", "choices": list(RECIPES)})
    model: str = field(metadata={"help": "save_pretrained folder (with its processor), e.g. from avbert-convert."})
    data_dir: str | None = field(default=None, metadata={"help": "Dataset root folder."})
    train_shards: str | None = field(
        default=None,
        metadata={"help": "Shard manifests to train on instead of --data-dir's train split (docs/training.md)."},
    )
    eval_shards: str | None = field(
        default=None, metadata={"help": "Shard manifests to evaluate on instead of --data-dir's eval split."}
    )
    shuffle_buffer: int = field(default=1000, metadata={"help": "Samples per shard reader's shuffle buffer."})
    layout: str | None = field(
        default=None,
        metadata={"help": "ucf101, esc50, kinetics-sounds, folder, csv or json (default: the recipe's own)."},
    )
    split_id: int = field(default=1, metadata={"help": "Official split / fold number (UCF101 1-3, ESC-50 1-5)."})
    train_split: str = field(default="train", metadata={"help": "Split name for training."})
    eval_split: str = field(default="test", metadata={"help": "Split name for evaluation (the original tests on it)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows (smoke)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N eval rows (smoke)."})
    eval_only: bool = field(
        default=False,
        metadata={
            "help": "Only evaluate --model (TrainingArguments.do_eval is "
            "switched on by eval_strategy, so it cannot mean 'no training')."
        },
    )


def explicit_flags(argv: Sequence[str]) -> set[str]:
    """Names (underscored) of the `--flags` present on the command line, so recipe values never override them."""
    names = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            names.add(name.removeprefix("no_"))
    return names


def parse_args(argv: Sequence[str]) -> tuple[ModelDataArguments, TrainingArguments, Recipe]:
    """Parse the command line; the recipe's `TrainingArguments` values become the parser defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", choices=list(RECIPES))
    recipe_name = pre.parse_known_args(argv)[0].recipe
    parser = HfArgumentParser((ModelDataArguments, TrainingArguments))
    passed = explicit_flags(argv)
    if recipe_name is not None:
        defaults = recipe_training_defaults(RECIPES[recipe_name])
        parser.set_defaults(**{k: v for k, v in defaults.items() if k not in passed})
    data_args, training_args = parser.parse_args_into_dataclasses(args=list(argv))
    recipe = RECIPES[data_args.recipe]
    changes = {}
    if "learning_rate" in passed:
        changes["base_lr"] = training_args.learning_rate
    if "weight_decay" in passed:
        changes["weight_decay"] = training_args.weight_decay
    if changes:
        logger.info("Recipe %s overridden from the command line: %s", recipe.name, changes)
        recipe = dataclasses.replace(recipe, **changes)
    return data_args, training_args, recipe


def top_k_metrics() -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` with top-1 (`accuracy`, for `metric_for_best_model`) and top-5 accuracy, computed by the
    package's local `evaluate` module (works offline)."""
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
    auto_class = AutoModelForAudioClassification if recipe.modality == "audio" else AutoModelForVideoClassification
    config = AutoConfig.from_pretrained(model_dir)
    saved_names = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else []
    overrides: dict[str, Any] = recipe_config_overrides(recipe)
    relabel = saved_names != class_names
    if relabel:
        logger.info("Dataset classes differ from the checkpoint's %d labels: new heads.", len(saved_names))
        overrides.update(
            num_labels=len(class_names),
            id2label=dict(enumerate(class_names)),
            label2id={name: i for i, name in enumerate(class_names)},
        )
    model = auto_class.from_pretrained(model_dir, ignore_mismatched_sizes=True, **overrides)
    if relabel and len(saved_names) == len(class_names):
        _reinit_heads(model)
    if recipe.protocol == "linear_eval":
        model.freeze_encoder()
    return model


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
    if recipe.modality == "audio":
        return AutoFeatureExtractor.from_pretrained(model_dir)
    return AutoProcessor.from_pretrained(model_dir)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train, evaluate and save (model, processor, metrics, curves); returns the final eval metrics."""
    argv = sys.argv[1:] if argv is None else list(argv)
    data_args, training_args, recipe = parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    set_seed(training_args.seed)
    layout = data_args.layout or recipe.name

    if data_args.data_dir is None and None in (data_args.train_shards, data_args.eval_shards):
        raise ValueError("give --data-dir, or both --train_shards and --eval_shards")
    sets, class_names = {}, None
    for name, split, shards, limit in (
        ("train", data_args.train_split, data_args.train_shards, data_args.max_train_samples),
        ("eval", data_args.eval_split, data_args.eval_shards, data_args.max_eval_samples),
    ):
        if shards is not None:
            names = load_manifests(shards).class_names
        else:
            sets[name] = load_media_dataset(layout, data_args.data_dir, split, data_args.split_id)
            names = sets[name].features["label"].names
            if limit is not None:
                sets[name] = sets[name].select(range(min(limit, len(sets[name]))))
        if names is None:
            raise ValueError(f"the {name} shards {shards} are unlabeled (written with --unlabeled)")
        if class_names is not None and names != class_names:
            raise ValueError(f"The {data_args.train_split} and {data_args.eval_split} splits have different classes.")
        class_names = names

    processor = load_processor(data_args.model, recipe)
    model = load_model(data_args.model, recipe, class_names)
    transforms = {name: MediaTransform(processor, recipe.modality, train=name == "train") for name in ("train", "eval")}
    for name, shards in (("train", data_args.train_shards), ("eval", data_args.eval_shards)):
        if shards is not None:
            train = name == "train"
            sets[name] = shard_dataset(shards, transforms[name], training_args, data_args.shuffle_buffer, train)
        else:
            sets[name] = sets[name].with_transform(transforms[name])
    train_set, eval_set = sets["train"], sets["eval"]

    # No processing_class: a ProcessorMixin without a tokenizer crashes Trainer.train() in 5.24 (saved below).
    trainer = shard_trainer(AVBertTrainer)(
        model=model,
        args=training_args,
        recipe=recipe,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=AVBertDataCollator(),
        compute_metrics=top_k_metrics(),
        callbacks=[TrainingCurveCallback()],
    )
    resume: str | bool | None = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in {"true", "last", "latest"}:
        resume = True  # the newest checkpoint-* in output_dir
    if not data_args.eval_only:
        train_result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
    del trainer, model
    release_process_group()
    return metrics


if __name__ == "__main__":
    main()
