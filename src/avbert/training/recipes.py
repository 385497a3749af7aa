"""
The original AVBERT fine-tuning recipes (spec §0, §6) on top of the HF `Trainer`.

The `Trainer` defaults (AdamW, one learning rate, no decay on norms/biases, HF schedules with a final lr just above 0)
differ from the original in ways that change results, so `AVBertTrainer` (`trainers.py`) replaces the optimizer and the
schedule with the original ones built here: Adam with coupled L2 decay and eps 1e-6, separate "finetune" (backbone)
and "task" (head) groups, BatchNorm without decay, and a cosine or linear decay that reaches exactly 0 on the last
optimizer step.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .cli import has_accelerator

if TYPE_CHECKING:
    from transformers import TrainingArguments

logger = logging.getLogger(__name__)

MODALITIES = ("audio-visual", "visual", "audio")
PROTOCOLS = ("finetune", "linear_eval")
LR_POLICIES = ("cosine", "linear")
CLASSIFIER_LOSSES = ("cross_entropy", "multi_margin")


@dataclass(frozen=True)
class Recipe:
    """
    Hyper-parameters of one original experiment (`configs/<name>/config.yaml`).

    `train_batch_size` / `eval_batch_size` are global batches, as in PySlowFast (which divides them by the number of
    GPUs); `training_arguments` turns them into per-device sizes.
    """

    name: str
    modality: str  # "audio-visual" | "visual" | "audio"
    protocol: str  # "finetune" | "linear_eval"
    base_lr: float  # SOLVER.BASE_LR: the task heads
    finetune_lr: float  # SOLVER.FINETUNE_LR: the pretrained backbone (unused under linear_eval)
    weight_decay: float  # SOLVER.WEIGHT_DECAY: the task heads
    finetune_weight_decay: float  # SOLVER.FINETUNE_WEIGHT_DECAY: the backbone
    num_epochs: int
    train_batch_size: int
    eval_batch_size: int
    lr_policy: str = "cosine"  # "cosine" | "linear"
    bn_weight_decay: float = 0.0  # BN.WEIGHT_DECAY
    classifier_loss: str = "cross_entropy"  # "cross_entropy" | "multi_margin"
    multi_margin: float = 0.1
    classifier_dropout: float = 0.5  # MODEL.DROPOUT_RATE (applied to the model config by avbert-train)
    num_clips: int = 10  # TRAIN.NUM_SAMPLES
    adam_eps: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        for value, allowed, field in (
            (self.modality, MODALITIES, "modality"),
            (self.protocol, PROTOCOLS, "protocol"),
            (self.lr_policy, LR_POLICIES, "lr_policy"),
            (self.classifier_loss, CLASSIFIER_LOSSES, "classifier_loss"),
        ):
            if value not in allowed:
                raise ValueError(f"Recipe.{field} must be one of {allowed}, got {value!r}.")


RECIPES: dict[str, Recipe] = {
    "ucf101": Recipe(
        name="ucf101",
        modality="visual",
        protocol="finetune",
        base_lr=0.03,
        finetune_lr=1e-4,
        weight_decay=5e-6,
        finetune_weight_decay=5e-6,
        lr_policy="cosine",
        num_epochs=20,
        train_batch_size=32,
        eval_batch_size=16,
    ),
    "esc50": Recipe(
        name="esc50",
        modality="audio",
        protocol="linear_eval",
        base_lr=0.003,
        finetune_lr=0.0,
        weight_decay=5e-6,
        finetune_weight_decay=0.0,
        lr_policy="linear",
        num_epochs=300,
        train_batch_size=128,
        eval_batch_size=128,
        classifier_loss="multi_margin",
        classifier_dropout=0.1,
    ),
    "kinetics-sounds": Recipe(
        name="kinetics-sounds",
        modality="audio-visual",
        protocol="finetune",
        base_lr=0.001,
        finetune_lr=1e-4,
        weight_decay=5e-6,
        finetune_weight_decay=5e-6,
        lr_policy="cosine",
        num_epochs=20,
        train_batch_size=5,
        eval_batch_size=5,
    ),
}


def build_param_groups(model: nn.Module, recipe: Recipe) -> list[dict[str, Any]]:
    """
    Split the trainable parameters into the original's optimizer groups (spec §6.1).

    - `finetune_bn` / `finetune_rest`: the pretrained backbone (`model.avbert.*`), at `finetune_lr`; BatchNorm
      parameters get `bn_weight_decay`, the rest `finetune_weight_decay`.
    - `task_bn` / `task_rest`: the heads (everything else), at `base_lr` with `bn_weight_decay` / `weight_decay`.

    BatchNorm is recognized by module type (`nn.BatchNorm*d`), not by the original's `'bn' in name` test, which
    depends on attribute names. As in the original, LayerNorm weights/biases and all other biases DO get weight decay
    (only BatchNorm is excluded), unlike the HF `Trainer` default.

    Under `linear_eval` only head parameters are optimized (the backbone is frozen, `model.freeze_encoder()`), and
    every group follows the `base_lr` schedule. Frozen parameters (`requires_grad=False`) and empty groups are omitted.
    """
    batch_norm_ids = {
        id(param)
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for param in module.parameters(recurse=False)
    }
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    backbone_ids = {id(param) for param in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
    linear_eval = recipe.protocol == "linear_eval"
    groups: dict[str, dict[str, Any]] = {
        "finetune_bn": {"lr": recipe.finetune_lr, "weight_decay": recipe.bn_weight_decay},
        "finetune_rest": {"lr": recipe.finetune_lr, "weight_decay": recipe.finetune_weight_decay},
        "task_bn": {"lr": recipe.base_lr, "weight_decay": recipe.bn_weight_decay},
        "task_rest": {"lr": recipe.base_lr, "weight_decay": recipe.weight_decay},
    }
    members: dict[str, list[nn.Parameter]] = {name: [] for name in groups}
    for _, param in model.named_parameters():  # de-duplicated, like the original
        if not param.requires_grad:
            continue
        in_backbone = id(param) in backbone_ids
        if in_backbone and linear_eval:
            continue
        kind = "finetune" if in_backbone else "task"
        members[f"{kind}_{'bn' if id(param) in batch_norm_ids else 'rest'}"].append(param)
    return [{"params": members[name], "name": name, **groups[name]} for name in groups if members[name]]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Adam:
    """Adam with coupled L2 weight decay, the recipe's betas, eps 1e-6 and no amsgrad (spec §6.1, quirk 13)."""
    groups = build_param_groups(model, recipe)
    if not groups:
        raise ValueError("The model has no trainable parameters for this recipe.")
    fused = fused_adam_supported(groups) or None
    return torch.optim.Adam(groups, betas=recipe.betas, eps=recipe.adam_eps, amsgrad=False, fused=fused)


def fused_adam_supported(groups: list[dict]) -> bool:
    """
    Whether torch's fused Adam kernel (the same update, one kernel per step instead of a loop over the parameters;
    docs/performance.md) serves every parameter: floating point, on a CPU or CUDA device.
    """
    parameters = [parameter for group in groups for parameter in group["params"]]
    return all(parameter.is_floating_point() and parameter.device.type in ("cpu", "cuda") for parameter in parameters)


def schedule_factor(lr_policy: str, progress: float) -> float:
    """The original's lr multiplier at `progress = step / N` (step 1..N): 0 at the last step for both policies."""
    if lr_policy == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if lr_policy == "linear":
        return max(0.0, 1.0 - progress)
    raise ValueError(f"Unknown lr_policy {lr_policy!r}; expected one of {LR_POLICIES}.")


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, num_training_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """
    The original per-step schedule as a `LambdaLR`.

    The original increments its step counter before computing the lr, so optimizer step s (0-based, s = 0..N-1) uses
    `schedule((s + 1) / N)`: the first step already decays and the last one uses lr 0. Each group's own initial lr
    (finetune_lr or base_lr) is multiplied by that factor. The factor is a plain closure so checkpoints store no
    schedule state beyond the step count; N comes from the current run on resume.
    """
    if num_training_steps < 1:
        raise ValueError(f"num_training_steps must be >= 1, got {num_training_steps}.")
    policy, total = recipe.lr_policy, num_training_steps
    schedule_factor(policy, 0.0)  # validate the policy now, not at the first step

    def factor(step: int) -> float:
        return schedule_factor(policy, min(step + 1, total) / total)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _per_device(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        logger.warning("Global batch %d is not divisible by %d processes; rounding down.", global_batch, world_size)
    return max(1, global_batch // world_size)


def recipe_training_defaults(recipe: Recipe, world_size: int | None = None) -> dict[str, Any]:
    """
    `TrainingArguments` values implied by a recipe. The recipe's batch sizes are global, so they are divided by the
    number of processes (`WORLD_SIZE`, set by torchrun). `learning_rate` / `weight_decay` / `lr_scheduler_type` /
    Adam settings only document the recipe here; `AVBertTrainer` builds the real groups.
    """
    world_size = _world_size() if world_size is None else world_size
    has_tensorboard = (
        importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    )
    return {
        "num_train_epochs": float(recipe.num_epochs),
        "per_device_train_batch_size": _per_device(recipe.train_batch_size, world_size),
        "per_device_eval_batch_size": _per_device(recipe.eval_batch_size, world_size),
        "learning_rate": recipe.base_lr,
        "weight_decay": recipe.weight_decay,
        "lr_scheduler_type": recipe.lr_policy,
        "adam_beta1": recipe.betas[0],
        "adam_beta2": recipe.betas[1],
        "adam_epsilon": recipe.adam_eps,
        "remove_unused_columns": False,  # the columns are decoded lazily by with_transform
        "eval_strategy": "epoch",  # the original tests every epoch (TRAIN.TEST_PERIOD = 1)
        "save_strategy": "epoch",
        # The newest two checkpoints (optimizer state included): one to resume from if the newest was cut short,
        # not one per epoch (300 for ESC-50). No load_best_model_at_end: the eval split is the test split.
        "save_total_limit": 2,
        "logging_strategy": "steps",
        "report_to": ["tensorboard"] if has_tensorboard else "none",
        "dataloader_num_workers": min(4, os.cpu_count() or 1),
        # Pinned memory only helps a copy to an accelerator; without one torch warns at every epoch's DataLoader.
        "dataloader_pin_memory": has_accelerator(),
        "label_names": ["labels"],
    }


def training_arguments(recipe: Recipe, output_dir: str | os.PathLike[str], **overrides: Any) -> TrainingArguments:
    """`TrainingArguments` for a recipe; keyword `overrides` win over the recipe's values."""
    from transformers import TrainingArguments

    values = {**recipe_training_defaults(recipe), "output_dir": str(output_dir), **overrides}
    return TrainingArguments(**values)


def recipe_config_overrides(recipe: Recipe) -> dict[str, Any]:
    """Model-config values the recipe decides (loss, margin, head dropout), as `from_pretrained` keyword arguments."""
    return {
        "classifier_loss": recipe.classifier_loss,
        "multi_margin_margin": recipe.multi_margin,
        "classifier_dropout": recipe.classifier_dropout,
    }
