"""`avbert-prepare shards` + `avbert-pretrain --shards` under a 2-process CPU torchrun (gloo): every sample exactly
once per epoch across ranks and DataLoader workers, through a SIGKILL and a resume, and a model that loads."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from test_pretraining_cli import TINY  # the tiny pretraining model of the folder-based CLI tests

from avbert.data.prepare import main as prepare_main
from avbert.data.synthetic import make_synthetic_av_dataset
from avbert.modeling_avbert import AVBertForPreTraining

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 16  # 8 shards of 2
STEPS_PER_EPOCH = 4  # per rank: 8 samples, 2 workers of 4, batches of 2
STALL_AT_STEP = 7  # checkpoint-7 is 3 batches into epoch 1: worker 0 has delivered 2 batches, worker 1 one

# avbert-pretrain with two test probes: each trained batch's sample keys are logged per optimizer step, and the first
# run stalls after STALL_AT_STEP (once its checkpoint is written) so that the SIGKILL lands at a known place.
SCRIPT = """
import json, os, sys, time
import torch.distributed as dist
from avbert.training import pretrain
from avbert.training.trainers import PreTrainer, PretrainingCollator  # the classes pretrain.run() builds

LOG, STALL = os.environ["SAMPLE_LOG"], int(os.environ.get("STALL_AT_STEP", "0"))
collate = PretrainingCollator.__call__
compute_loss = PreTrainer.compute_loss


def collate_with_keys(self, features):
    batch = collate(self, features)
    batch["sample_keys"] = [row["key"] for row in features if not row.get("error")]
    return batch


def logged_compute_loss(self, model, inputs, *args, **kwargs):
    keys = inputs.pop("sample_keys")
    rank = self.args.process_index
    if STALL and self.state.global_step == STALL:
        open(os.path.join(LOG, f"stalled{rank}"), "w").close()
        time.sleep(600)
    record = {"step": self.state.global_step + 1, "keys": keys, "world_size": self.args.world_size,
              "distributed": dist.is_initialized() and dist.get_backend() == "gloo"}
    with open(os.path.join(LOG, f"rank{rank}.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\\n")
    return compute_loss(self, model, inputs, *args, **kwargs)


PretrainingCollator.__call__ = collate_with_keys
PreTrainer.compute_loss = logged_compute_loss
pretrain.main(sys.argv[1:])
"""


def _pretrain_args(shards: Path, out: Path) -> list[str]:
    return [
        "--shards",
        str(shards),
        "--output-dir",
        str(out),
        "--config-overrides",
        json.dumps(TINY),
        "--num_clips",
        "2",
        "--short_side",
        "32",
        "--crop_size",
        "32",
        "--num_train_epochs",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--dataloader_num_workers",
        "2",
        "--shuffle_buffer",
        "3",
        "--save_strategy",
        "steps",
        "--save_steps",
        str(STALL_AT_STEP),
        "--logging_steps",
        "1",
        # CPU torchrun: --use_cpu keeps the Trainer on CPU; the run is still two gloo DDP processes (asserted below).
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
    ]


def _torchrun(script: Path, args: list[str], log: Path, stall: int = 0) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAMPLE_LOG": str(log), "STALL_AT_STEP": str(stall)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [*command, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the SIGKILL reaches torchrun, ranks and workers
    )


def _records(log: Path) -> dict[int, list[dict]]:
    return {
        rank: [json.loads(line) for line in (log / f"rank{rank}.jsonl").read_text().splitlines()] for rank in range(2)
    }


def test_two_process_pretraining_over_shards_sees_each_sample_once_through_sigkill_and_resume(tmp_path: Path) -> None:
    source = make_synthetic_av_dataset(
        tmp_path / "videos", num_classes=2, videos_per_class=NUM_SAMPLES // 2, duration=1.0, size=32, test_fraction=0
    )
    (source / "not_a_video.mp4").write_bytes(b"\x00" * 200)  # probed, listed, never written
    shards = tmp_path / "shards"
    assert prepare_main(["shards", str(source), str(shards), "--unlabeled", "--shard-samples", "2"]) == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    assert (len(manifest["shards"]), manifest["num_samples"]) == (8, NUM_SAMPLES)
    assert [item["path"] for item in manifest["skipped"]] == ["not_a_video.mp4"]

    script = tmp_path / "pretrain_with_probes.py"
    script.write_text(SCRIPT)
    out, log = tmp_path / "out", tmp_path / "log"
    log.mkdir()
    first = _torchrun(script, _pretrain_args(shards, out), log, stall=STALL_AT_STEP)
    deadline = time.monotonic() + 300
    while not all((log / f"stalled{rank}").exists() for rank in range(2)):
        if first.poll() is not None:
            raise AssertionError(f"the first run ended before the kill:\n{first.stdout.read().decode()[-4000:]}")
        assert time.monotonic() < deadline, "the first run did not reach the stall"
        time.sleep(0.2)
    assert (out / f"checkpoint-{STALL_AT_STEP}" / "trainer_state.json").is_file()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    before = _records(log)
    assert all(max(r["step"] for r in records) == STALL_AT_STEP for records in before.values())

    resumed = _torchrun(script, [*_pretrain_args(shards, out), "--resume_from_checkpoint", "true"], log)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output.decode()[-4000:]

    records = _records(log)
    assert all(r["world_size"] == 2 and r["distributed"] for rank in records.values() for r in rank)
    for rank, rank_records in records.items():
        steps = [r["step"] for r in rank_records]
        # Steps 1-7 from the killed run, 8 from the resumed one: no step trained twice or left out.
        assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1)), (rank, steps)
    every_key = {f"shard-{i // 2:06d}.tar/{i:09d}.mp4" for i in range(NUM_SAMPLES)}
    for epoch in range(2):
        seen = [
            key
            for rank in records.values()
            for r in rank
            if (r["step"] - 1) // STEPS_PER_EPOCH == epoch
            for key in r["keys"]
        ]
        counts = Counter(seen)
        assert set(counts) == every_key and set(counts.values()) == {1}, (epoch, counts)  # union and disjointness
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 * STEPS_PER_EPOCH
    model = AVBertForPreTraining.from_pretrained(out)
    assert model.config.num_clips == 2 and model.config.hidden_size == 32
