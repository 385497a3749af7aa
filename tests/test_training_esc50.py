"""A short from-scratch training run of the audio model on real ESC-50 clips (benchmarks/bench_esc50.py, scaled down).

Skipped without the shared ESC-50 data. Asserts that the training loss falls and the evaluation gives finite metrics;
no accuracy threshold (a few epochs on 40 clips says little about accuracy; BENCHMARKS.md records the real run).
"""

import csv
import importlib.util
import math
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ESC50_DIR = Path(os.environ.get("AVBERT_SHARED_DIR", REPO.parent / "shared")) / "data" / "esc50"

pytestmark = pytest.mark.skipif(
    not (ESC50_DIR / "meta" / "esc50.csv").is_file(), reason=f"ESC-50 data not found in {ESC50_DIR}"
)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_esc50", REPO / "benchmarks" / "bench_esc50.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_is_deterministic_and_disjoint(bench, tmp_path):
    first = bench.write_split(ESC50_DIR, tmp_path / "a", train_per_class=6, test_per_class=2)
    second = bench.write_split(ESC50_DIR, tmp_path / "b", train_per_class=6, test_per_class=2)
    rows = {}
    for split in ("train", "test"):
        assert (first / f"{split}.csv").read_text() == (second / f"{split}.csv").read_text()
        with (first / f"{split}.csv").open(newline="") as f:
            rows[split] = list(csv.DictReader(f))
    assert len(rows["train"]) == 300 and len(rows["test"]) == 100
    assert not {r["path"] for r in rows["train"]} & {r["path"] for r in rows["test"]}
    assert all(Path(r["path"]).name.startswith("4-") for split in rows.values() for r in split)
    assert len({r["label"] for r in rows["test"]}) == 50


def test_from_scratch_training_loss_falls(bench, tmp_path):
    result = bench.run(
        ESC50_DIR,
        tmp_path,
        audio_base_width=4,
        audio_depths=(1, 1, 1, 1),
        train_num_clips=2,
        eval_num_clips=2,
        epochs=3,
        lr=3e-3,
        batch_size=8,
        train_per_class=4,
        test_per_class=1,
        num_classes=10,
        logging_steps=5,  # one logged loss per epoch, each the mean of its 5 steps
    )
    assert result["num_classes"] == 10 and result["train_clips"] == 40 and result["test_clips"] == 10
    assert result["steps"] == 15 and len(result["losses"]) == 3
    assert all(math.isfinite(loss) for _, loss in result["losses"])
    assert result["last_loss"] < result["first_loss"], result["losses"]
    for key in ("eval_loss", "top1", "top5"):
        assert math.isfinite(result[key]), key
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert result["skipped_files"] == []
    assert (tmp_path / "summary.json").is_file()
