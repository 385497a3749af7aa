"""Recipes, optimizer groups, schedule and the Trainer integration (loss scale, resume, CPU DDP) on tiny models."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from avbert import AVBertConfig, AVBertForAudioClassification, AVBertForVideoClassification
from avbert.training.recipes import (
    RECIPES,
    Recipe,
    build_optimizer,
    build_param_groups,
    build_scheduler,
    training_arguments,
)
from avbert.training.train import explicit_flags, parse_args
from avbert.training.trainers import AVBertTrainer

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "visual_base_width": 4,
    "audio_base_width": 4,
    "visual_depths": [1, 2],
    "audio_depths": [1, 2],
    "visual_temporal_kernel_sizes": [1, 3],
    "audio_num_separable_stages": 1,
    "num_mel_bins": 16,
    "audio_num_frames": 16,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "orthogonal_size": 8,
    "max_position_embeddings": 8,
    "num_clips": 3,
    "num_frames": 4,
    "num_labels": 3,
    # No dropout: the Trainer comparisons below must be deterministic.
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "classifier_dropout": 0.0,
}


class RandomClips(torch.utils.data.Dataset):
    """Random model inputs with the collated names (`pixel_values`, `input_features`, `labels`), labels cycling 0..2."""

    def __init__(self, size: int, seed: int = 0, video: bool = True) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.rows = []
        for index in range(size):
            row: dict[str, object] = {}
            if video:
                row["pixel_values"] = torch.randn(3, 3, 4, 16, 16, generator=generator)
            row["input_features"] = torch.randn(3, 1, 16, 16, generator=generator)
            row["labels"] = index % 3
            self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, object]:
        return self.rows[index]


# Subprocess scripts (written to tmp_path) reuse the tiny config and data of this module.
SCRIPT_PRELUDE = f"""
import json, os, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import torch
from transformers import TrainerCallback
from avbert import AVBertConfig, AVBertForAudioClassification, AVBertForVideoClassification
from avbert.training.recipes import Recipe, training_arguments
from avbert.training.trainers import AVBertTrainer
from test_training_recipes import TINY, RandomClips
"""


def tiny_config(**changes: object) -> AVBertConfig:
    return AVBertConfig(**{**TINY, **changes})


def finetune_recipe(**changes: object) -> Recipe:
    values = {
        "name": "tiny",
        "modality": "audio-visual",
        "protocol": "finetune",
        "base_lr": 1e-2,
        "finetune_lr": 1e-3,
        "weight_decay": 5e-6,
        "finetune_weight_decay": 5e-6,
        "num_epochs": 1,
        "train_batch_size": 4,
        "eval_batch_size": 4,
    }
    return Recipe(**{**values, **changes})


def args_for(recipe: Recipe, output_dir: Path, **overrides: object):
    base = {
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "report_to": "none",
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": 1,
        "seed": 0,
        "disable_tqdm": True,
    }
    return training_arguments(recipe, output_dir, **{**base, **overrides})


# ---------------------------------------------------------------- recipes and optimizer groups


def test_recipes_have_original_values() -> None:
    ucf, esc, ks = RECIPES["ucf101"], RECIPES["esc50"], RECIPES["kinetics-sounds"]
    assert (ucf.protocol, ucf.base_lr, ucf.finetune_lr, ucf.lr_policy, ucf.num_epochs) == (
        "finetune",
        0.03,
        1e-4,
        "cosine",
        20,
    )
    assert (ucf.weight_decay, ucf.finetune_weight_decay, ucf.train_batch_size, ucf.eval_batch_size) == (
        5e-6,
        5e-6,
        32,
        16,
    )
    assert (esc.protocol, esc.base_lr, esc.finetune_lr, esc.lr_policy, esc.num_epochs) == (
        "linear_eval",
        3e-3,
        0.0,
        "linear",
        300,
    )
    assert (esc.weight_decay, esc.finetune_weight_decay, esc.train_batch_size, esc.classifier_loss) == (
        5e-6,
        0.0,
        128,
        "multi_margin",
    )
    assert esc.multi_margin == 0.1 and esc.modality == "audio" and ucf.modality == "visual"
    assert (ks.base_lr, ks.finetune_lr, ks.lr_policy, ks.num_epochs, ks.train_batch_size) == (
        1e-3,
        1e-4,
        "cosine",
        20,
        5,
    )
    assert ks.modality == "audio-visual"
    for recipe in RECIPES.values():
        assert (recipe.bn_weight_decay, recipe.adam_eps, recipe.betas, recipe.num_clips) == (
            0.0,
            1e-6,
            (0.9, 0.999),
            10,
        )
    with pytest.raises(ValueError, match="lr_policy"):
        finetune_recipe(lr_policy="step")


def _group_members(groups: list[dict]) -> dict[str, set[int]]:
    return {g["name"]: {id(p) for p in g["params"]} for g in groups}


@pytest.mark.parametrize("recipe_name", ["ucf101", "kinetics-sounds"])
def test_finetune_groups_follow_the_original(recipe_name: str) -> None:
    recipe = RECIPES[recipe_name]
    visual_only = recipe.modality == "visual"
    model = AVBertForVideoClassification(
        tiny_config(use_audio=not visual_only, use_transformer=not visual_only, num_labels=5)
    )
    groups = build_param_groups(model, recipe)
    members = _group_members(groups)
    assert [g["name"] for g in groups] == ["finetune_bn", "finetune_rest", "task_rest"]  # the heads have no BN
    settings = {g["name"]: (g["lr"], g["weight_decay"]) for g in groups}
    assert settings == {
        "finetune_bn": (recipe.finetune_lr, 0.0),
        "finetune_rest": (recipe.finetune_lr, recipe.finetune_weight_decay),
        "task_rest": (recipe.base_lr, recipe.weight_decay),
    }
    all_ids = [id(p) for p in model.parameters()]
    assert sorted(all_ids) == sorted(i for ids in members.values() for i in ids)  # each parameter exactly once
    for name, module in model.named_modules():
        own = {id(p) for p in module.parameters(recurse=False)}
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert own <= members["finetune_bn"], name
        elif isinstance(module, nn.LayerNorm):  # the original decays LayerNorm (only BN is excluded)
            assert own <= (members["task_rest"] if name.startswith("sequence_head") else members["finetune_rest"]), name
    assert {id(p) for p in model.clip_head.parameters()} <= members["task_rest"]
    assert {id(p) for p in model.avbert.parameters()} == members["finetune_bn"] | members["finetune_rest"]


def test_linear_eval_optimizes_only_the_heads() -> None:
    recipe = RECIPES["esc50"]
    model = AVBertForAudioClassification(tiny_config(num_labels=50))
    model.freeze_encoder()
    groups = build_param_groups(model, recipe)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [("task_rest", 3e-3, 5e-6)]
    assert _group_members(groups)["task_rest"] == {id(p) for p in model.clip_head.parameters()}
    # Even with a trainable backbone, linear_eval leaves it out of the optimizer.
    unfrozen = AVBertForAudioClassification(tiny_config(num_labels=50))
    assert [g["name"] for g in build_param_groups(unfrozen, recipe)] == ["task_rest"]

    optimizer = build_optimizer(model, recipe)
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["eps"] == 1e-6 and optimizer.defaults["betas"] == (0.9, 0.999)
    assert optimizer.defaults["amsgrad"] is False


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("cosine", lambda t, n: 0.5 * (1 + math.cos(math.pi * t / n))),
        ("linear", lambda t, n: max(0.0, (n - t) / n)),
    ],
)
def test_schedule_matches_the_original(policy: str, expected) -> None:
    recipe = finetune_recipe(lr_policy=policy)
    model = nn.Sequential(nn.Linear(2, 2))
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": 0.5, "name": "task_rest"}])
    total = 10
    scheduler = build_scheduler(optimizer, recipe, total)
    lrs = []
    for _ in range(total):  # lr used by optimizer step t = 1..N
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for step in (1, total // 2, total):
        assert lrs[step - 1] == pytest.approx(0.5 * expected(step, total), abs=1e-12)
    assert lrs[-1] == 0.0
    assert lrs[0] < 0.5  # the first step already decays (the counter is incremented before the update)


# ---------------------------------------------------------------- Trainer integration


def test_trainer_uses_recipe_and_reduces_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AVBertForVideoClassification(tiny_config())
    data = RandomClips(4)
    recipe = finetune_recipe(base_lr=3e-2, finetune_lr=3e-3)
    trainer = AVBertTrainer(
        model=model, args=args_for(recipe, tmp_path, max_steps=12), recipe=recipe, train_dataset=data
    )
    assert trainer.model_accepts_loss_kwargs  # the model normalizes by num_items_in_batch itself
    trainer.train()
    groups = trainer.optimizer.param_groups
    assert [g["name"] for g in groups] == ["finetune_bn", "finetune_rest", "task_rest"]
    assert [g["initial_lr"] for g in groups] == [3e-3, 3e-3, 3e-2]
    assert all(g["lr"] == 0.0 for g in groups)  # the last step used lr 0
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses


def _first_logged_loss(tmp_path: Path, batch_size: int, accumulation: int) -> float:
    torch.manual_seed(0)
    model = AVBertForAudioClassification(tiny_config())
    model.freeze_encoder()  # BN on running stats: the loss no longer depends on how the batch is split
    recipe = finetune_recipe(modality="audio", protocol="linear_eval", base_lr=0.0)
    args = args_for(
        recipe,
        tmp_path / f"ga{accumulation}",
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
    )
    trainer = AVBertTrainer(model=model, args=args, recipe=recipe, train_dataset=RandomClips(4, video=False))
    trainer.train()
    return next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)


def test_gradient_accumulation_keeps_the_loss_scale(tmp_path: Path) -> None:
    full = _first_logged_loss(tmp_path, batch_size=4, accumulation=1)
    accumulated = _first_logged_loss(tmp_path, batch_size=2, accumulation=2)
    torch.manual_seed(0)
    model = AVBertForAudioClassification(tiny_config()).eval()
    data = RandomClips(4, video=False)
    reference = model(
        input_features=torch.stack([row["input_features"] for row in data.rows]),
        labels=torch.tensor([row["labels"] for row in data.rows]),
    ).loss.item()
    assert full == pytest.approx(reference, rel=1e-4)
    assert accumulated == pytest.approx(reference, rel=1e-4)  # not 2x: num_items_in_batch is honoured


RESUME_SCRIPT = (
    SCRIPT_PRELUDE
    + """
class Slow(TrainerCallback):  # gives the test time to kill the run after its first checkpoint
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(float(os.environ.get("STEP_SLEEP", "0")))

    def on_step_begin(self, args, state, control, **kwargs):
        if not hasattr(self, "first"):
            self.first = state.global_step
            print(f"FIRST_STEP={self.first}", flush=True)

output_dir, resume = sys.argv[1], sys.argv[2] == "resume"
torch.manual_seed(0)
model = AVBertForVideoClassification(AVBertConfig(**TINY))
recipe = Recipe(name="tiny", modality="audio-visual", protocol="finetune", base_lr=1e-2, finetune_lr=1e-3,
                weight_decay=5e-6, finetune_weight_decay=5e-6, num_epochs=3, train_batch_size=2, eval_batch_size=2)
args = training_arguments(recipe, output_dir, use_cpu=True, dataloader_num_workers=0, report_to="none",
                          eval_strategy="no", save_strategy="steps", save_steps=2, logging_steps=1, seed=0,
                          full_determinism=True, disable_tqdm=True)
trainer = AVBertTrainer(model=model, args=args, recipe=recipe, train_dataset=RandomClips(6), callbacks=[Slow()])
trainer.train(resume_from_checkpoint=True if resume else None)
trainer.save_model(output_dir)
"""
)


def _run_script(script: Path, *args: str, env: dict[str, str] | None = None, launcher: list[str] | None = None):
    command = [*(launcher or [sys.executable]), str(script), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(command, cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen, timeout: float = 120) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output.decode()[-4000:]
    return output.decode()


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    script = tmp_path / "resume_train.py"
    script.write_text(RESUME_SCRIPT)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = _run_script(script, str(straight), "fresh")
    victim = _run_script(script, str(killed), "fresh", env={"STEP_SLEEP": "1.0"})
    deadline = time.monotonic() + 90
    while not any((c / "trainer_state.json").exists() for c in killed.glob("checkpoint-*")):
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.1)
    time.sleep(0.3)  # let the checkpoint files land, then kill hard in the middle of the next steps
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    checkpoints = sorted(killed.glob("checkpoint-*"))
    assert checkpoints and not (killed / "model.safetensors").exists()
    for partial in checkpoints:  # a checkpoint cut off while being written would not be resumable
        if not (partial / "trainer_state.json").exists():
            shutil.rmtree(partial)
    resumed_log = _finish(_run_script(script, str(killed), "resume"))
    first_step = int(resumed_log.split("FIRST_STEP=")[1].split()[0])
    assert first_step == int(max(checkpoints, key=lambda c: int(c.name.split("-")[1])).name.split("-")[1])
    _finish(reference)
    expected, resumed = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for key, value in expected.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)


DDP_SCRIPT = (
    SCRIPT_PRELUDE
    + """
import torch.distributed as dist
from avbert.training.distributed import release_process_group
output = sys.argv[1]
world_size = int(os.environ.get("WORLD_SIZE", "1"))
torch.manual_seed(0)
model = AVBertForAudioClassification(AVBertConfig(**TINY))
model.freeze_encoder()
recipe = Recipe(name="tiny", modality="audio", protocol="linear_eval", base_lr=0.0, finetune_lr=0.0,
                weight_decay=0.0, finetune_weight_decay=0.0, num_epochs=1, train_batch_size=4, eval_batch_size=4)
args = training_arguments(recipe, output, use_cpu=True, dataloader_num_workers=0, report_to="none",
                          eval_strategy="no", save_strategy="no", logging_steps=1, max_steps=1, seed=0,
                          disable_tqdm=True)
assert args.per_device_train_batch_size == 4 // world_size  # the recipe batch is global
trainer = AVBertTrainer(model=model, args=args, recipe=recipe, train_dataset=RandomClips(4, video=False))
assert args.world_size == world_size
if world_size > 1:
    assert dist.is_initialized() and dist.get_world_size() == 2 and dist.get_backend() == "gloo"
trainer.train()
loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
with open(os.path.join(output, f"rank{args.process_index}.json"), "w") as f:
    json.dump({"loss": loss, "world_size": args.world_size}, f)
del trainer
release_process_group()  # as avbert-train does; without it Gloo threads can abort a finished rank at exit
"""
)


def test_two_process_cpu_ddp_logs_the_single_process_loss(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir()
    multi.mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    distributed = _run_script(script, str(multi), launcher=torchrun)
    _finish(_run_script(script, str(single)))
    _finish(distributed)
    one = json.loads((single / "rank0.json").read_text())
    ranks = [json.loads((multi / f"rank{i}.json").read_text()) for i in range(2)]
    assert one["world_size"] == 1 and all(r["world_size"] == 2 for r in ranks)
    for rank in ranks:
        assert rank["loss"] == pytest.approx(one["loss"], rel=1e-4)  # not 2x: world-size scaling is undone


def test_explicit_flags_are_detected() -> None:
    argv = [
        "--recipe",
        "esc50",
        "--learning-rate=0.1",
        "--per_device_train_batch_size",
        "8",
        "--no_remove_unused_columns",
    ]
    assert explicit_flags(argv) == {"recipe", "learning_rate", "per_device_train_batch_size", "remove_unused_columns"}


def test_cli_recipe_fills_only_unset_training_arguments(tmp_path: Path) -> None:
    common = ["--recipe", "ucf101", "--data-dir", "d", "--model", "m", "--output-dir", str(tmp_path)]
    data_args, args, recipe = parse_args([*common, "--per_device_train_batch_size", "4", "--learning-rate=0.5"])
    assert (data_args.recipe, data_args.split_id, data_args.layout) == ("ucf101", 1, None)
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.per_device_eval_batch_size) == (20, 4, 16)
    assert args.remove_unused_columns is False and args.label_names == ["labels"]
    assert recipe.base_lr == 0.5 and recipe.finetune_lr == 1e-4  # an explicit --learning_rate sets the head lr
    assert RECIPES["ucf101"].base_lr == 0.03
    _, _, untouched = parse_args(common)
    assert untouched == RECIPES["ucf101"]
