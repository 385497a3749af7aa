"""Reuse of freed memory on the CPU (`avbert.training.heap`): what it changes in the process, and who turns it on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_training_recipes import RandomClips, args_for, finetune_recipe, tiny_config

from avbert import AVBertForAudioClassification
from avbert.training import evaluate, heap, pretrain, train, trainers
from avbert.training.heap import running_on_glibc
from avbert.training.trainers import AVBertTrainer

glibc_only = pytest.mark.skipif(not running_on_glibc(), reason="glibc's malloc settings")

# Page faults of a "step" (three tensors, filled whole, then freed) before the switch and at the end after it, in a
# fresh process. The heap needs a few steps to hold a step's blocks (fragmentation), then faults in nothing.
STEP_FAULTS = """
import resource
import torch
from avbert.training.heap import enable_freed_memory_reuse

def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    kept = [torch.ones(n) for n in (2**24, 2**23, 3 * 2**22)]  # 64, 32 and 48 MiB
    del kept
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

step()
default = step()
enabled = enable_freed_memory_reuse()
print(default, enabled, [step() for _ in range(6)][-1])
"""


@glibc_only
def test_freed_blocks_are_reused_without_page_faults() -> None:
    completed = subprocess.run([sys.executable, "-c", STEP_FAULTS], capture_output=True, text=True, check=True)
    default, enabled, reused = completed.stdout.split()
    assert enabled == "True"
    # glibc maps each block over 32 MiB afresh: one fault per 4 KiB page of the 144 MiB (fewer with huge pages).
    assert int(default) > 144 * 2**20 // 4096 // 4
    assert int(reused) < 50, completed.stdout  # from the heap, resident already


def test_another_c_library_is_left_as_it_is(monkeypatch) -> None:
    monkeypatch.setattr(heap, "running_on_glibc", lambda: False)
    assert heap.enable_freed_memory_reuse() is False  # no mallopt call: musl's or macOS's malloc has other knobs


def test_the_trainers_turn_it_on_on_the_cpu_unless_told_not_to(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(trainers, "enable_freed_memory_reuse", lambda: calls.append(True))
    recipe = finetune_recipe(modality="audio")
    for reuse in (True, False):
        AVBertTrainer(
            model=AVBertForAudioClassification(tiny_config()),
            args=args_for(recipe, tmp_path / str(reuse)),
            recipe=recipe,
            train_dataset=RandomClips(2, video=False),
            reuse_freed_memory=reuse,
        )
    assert calls == [True]


def test_every_command_has_the_switch(tmp_path: Path) -> None:
    common = ["--output_dir", str(tmp_path)]
    train_args = train.parse_args(["--recipe", "esc50", "--model", str(tmp_path), *common])[0]
    assert train_args.reuse_freed_memory
    train_args = train.parse_args(["--recipe", "esc50", "--model", str(tmp_path), "--no_reuse_freed_memory", *common])
    assert not train_args[0].reuse_freed_memory
    assert not pretrain.parse_args(["--data-dir", str(tmp_path), "--no_reuse_freed_memory", *common])[
        0
    ].reuse_freed_memory
    evaluate_args = ["--model", str(tmp_path), "--recipe", "esc50"]
    assert evaluate.parse_args(evaluate_args).reuse_freed_memory
    assert not evaluate.parse_args([*evaluate_args, "--no-reuse-freed-memory"]).reuse_freed_memory


@glibc_only
def test_bench_model_times_the_reused_memory_variants_in_a_process_of_their_own() -> None:
    """The benchmark's second process (StepChild) answers every round: its variants get times, not its peaks."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_model.py"
    command = [sys.executable, str(script), "--tiny", "--no-write", "--phases", "train", "--dtypes", "fp32"]
    command += ["--memory", "in-process", "--warmup", "0", "--iters", "2"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = {
        cells[2]: cells for cells in (line.split(" | ") for line in completed.stdout.splitlines()) if len(cells) > 8
    }
    for name in ("plain", "channels-last + fused Adam", "fast", "fast + checkpointing"):
        assert name in rows, completed.stdout
        assert float(rows[name][3].replace(",", "")) > 0, completed.stdout  # a median time
    assert rows["fast"][8] == "n/a" and rows["plain"][8] != "n/a"  # no in-process peak of a reused heap
