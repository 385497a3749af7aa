"""The training command lines as a user meets them: exit codes, honest help and errors, splits, every container,
bad files skipped and reported, checkpoints that survive a crash. Tiny models and generated media throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avbert import (
    AVBertConfig,
    AVBertFeatureExtractor,
    AVBertForVideoClassification,
    AVBertProcessor,
    AVBertVideoProcessor,
)
from avbert.data.folders import load_media_dataset, media_files, stratified_subset
from avbert.data.synthetic import make_synthetic_av_dataset
from avbert.data.transform import AVBertDataCollator, MediaDataset, MediaTransform
from avbert.training.cli import is_complete_checkpoint, last_complete_checkpoint, resolve_resume
from avbert.training.train import parse_args

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NUM_CLIPS, NUM_FRAMES = 2, 4


def console(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run an installed console script (`.venv/bin/avbert-*`) on this tree's package."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 3 one-second videos with sound, split 2 train / 1 test per class, plus clutter in train."""
    root = make_synthetic_av_dataset(
        tmp_path_factory.mktemp("media"), videos_per_class=3, duration=1.0, size=48, fps=15, seed=3
    )
    first = sorted((root / "train").iterdir())[0]
    (first / "readme.txt").write_text("not a video")
    (first / "zz_broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video" * 8)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = AVBertConfig(
        visual_base_width=4,
        audio_base_width=4,
        visual_depths=[1, 1],
        audio_depths=[1, 1],
        visual_temporal_kernel_sizes=[1, 3],
        audio_num_separable_stages=1,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_hidden_layers=1,
        orthogonal_size=8,
        max_position_embeddings=8,
        num_clips=NUM_CLIPS,
        num_frames=NUM_FRAMES,
        num_labels=4,
    )
    AVBertForVideoClassification(config).save_pretrained(folder)
    AVBertProcessor(
        feature_extractor=AVBertFeatureExtractor(num_clips=NUM_CLIPS),
        video_processor=AVBertVideoProcessor(
            num_clips=NUM_CLIPS,
            num_frames=NUM_FRAMES,
            size={"shortest_edge": 32},
            crop_size={"height": 28, "width": 28},
            train_jitter_scales=(32, 40),
            train_crop_size=28,
            load_audio_in_video=True,
        ),
    ).save_pretrained(folder)
    return folder


TRAIN_FLAGS = (
    "--per_device_train_batch_size=2",
    "--per_device_eval_batch_size=2",
    "--dataloader_num_workers=2",
    "--report_to=none",
    "--disable_tqdm=true",
    "--save_strategy=no",
    "--eval_strategy=no",
)


# ---------------------------------------------------------------------------------------------------------------------
# Item 1 + 5: exit codes of every console script; one bad file never kills a run, skipped files reach the metrics


def test_train_and_evaluate_exit_0_and_report_skipped_files_across_workers(media_dir, model_dir, tmp_path):
    out = tmp_path / "run"
    common = ("--recipe", "kinetics-sounds", "--data_dir", str(media_dir), "--model", str(model_dir))
    result = console("avbert-train", *common, "--output_dir", str(out), "--num_train_epochs", "1", *TRAIN_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]  # was 1: main() returned the metrics dict to sys.exit
    train = json.loads((out / "train_results.json").read_text())
    # The broken file was decoded in a DataLoader worker (2 workers): its report still reaches the main process.
    assert train["num_skipped_files"] == 1 and "zz_broken.mp4" in train["skipped_files"][0]
    assert "readme.txt" in result.stderr  # never taken as a video, and reported
    assert (out / "processor_config.json").is_file()

    evaluated = console(
        "avbert-evaluate", "--model", str(out), "--data-dir", str(media_dir), "--recipe", "kinetics-sounds",
        "--output-dir", str(tmp_path / "eval"), "--device", "cpu",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (tmp_path / "eval" / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        (
            "avbert-train",
            ("--recipe", "ucf101", "--data_dir", ".", "--model", "nope", "--output_dir", "o"),
            "--model nope: no such folder",
        ),
        (
            "avbert-evaluate",
            ("--recipe", "esc50", "--data-dir", ".", "--model", "nope"),
            "--model nope: no such folder",
        ),
        ("avbert-pretrain", ("--data_dir", "no/such/dir", "--output_dir", "o"), "not found"),
        ("avbert-prepare", ("folder", "--output-dir", "o"), "needs --source"),
        ("avbert-convert", ("missing.pyth", "o", "--task", "ucf101"), "not a readable"),
    ],
)
def test_console_scripts_fail_with_one_line_and_nonzero(script, args, message, tmp_path):
    result = subprocess.run(
        [str(BIN / script), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and message in result.stderr, result.stderr[-2000:]
    assert f"{script}: error:" in result.stderr


def test_params_exits_0():
    result = console("avbert-params")
    assert result.returncode == 0 and "transformer parameters" in result.stdout, result.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------------
# Item 7: CLI honesty


def test_help_shows_the_values_the_recipe_uses(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--recipe", "ucf101", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Total number of training epochs to perform. (default: 20.0)" in text
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Recipe values: ucf101 20.0, esc50 300.0, kinetics-sounds 20.0" in text
    assert "(default: 3.0)" not in text  # the TrainingArguments default no recipe uses


def test_lr_scheduler_type_is_honoured_or_refused(tmp_path, capsys):
    common = ["--recipe", "ucf101", "--data_dir", "d", "--model", "m", "--output_dir", str(tmp_path)]
    _, _, recipe = parse_args([*common, "--lr_scheduler_type", "linear"])
    assert recipe.lr_policy == "linear"  # was ignored: the recipe's cosine ran
    for refused in (["--lr_scheduler_type", "constant"], ["--warmup_steps", "10"], ["--optim", "sgd"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_args([*common, *refused])
        assert exit_info.value.code == 2
    assert "--optim" in capsys.readouterr().err


def test_missing_data_dir_is_a_clean_error(model_dir, tmp_path):
    result = console(
        "avbert-train", "--recipe", "ucf101", "--data_dir", str(tmp_path / "none"), "--model", str(model_dir),
        "--output_dir", str(tmp_path / "o"),
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--data_dir" in result.stderr and "no such folder" in result.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Item 3: splits


def test_folder_without_splits_gets_a_seeded_stratified_split(media_dir, tmp_path):
    flat = tmp_path / "flat"
    for video in (media_dir / "train").rglob("*_0*.mp4"):
        (flat / video.parent.name).mkdir(parents=True, exist_ok=True)
        (flat / video.parent.name / video.name).symlink_to(video)
    for index in range(5):
        (flat / "class_x").mkdir(exist_ok=True)
        (flat / "class_x" / f"v{index}.mp4").symlink_to(next((media_dir / "train").rglob("*.mp4")))
    train, test = (load_media_dataset("folder", flat, split) for split in ("train", "test"))
    assert not set(train["path"]) & set(test["path"])  # was: the same files for both
    assert sorted([*train["path"], *test["path"]]) == sorted(str(p) for p in flat.rglob("*.mp4"))
    assert test["label"].count(train.features["label"].names.index("class_x")) == 1  # 20% of 5
    assert load_media_dataset("folder", flat, "test")["path"] == test["path"]  # seeded: the same every call


def test_prepare_folder_output_splits_and_overlap_is_refused(media_dir, model_dir, tmp_path):
    from avbert.data import prepare

    out = tmp_path / "prepared"
    assert prepare.main(["folder", "--source", str(media_dir / "train"), "--output-dir", str(out)]) == 0
    train, test = (load_media_dataset("csv", out / "dataset.csv", split) for split in ("train", "test"))
    assert len(test) == 4 and not set(train["path"]) & set(test["path"])  # one of each class's 2 (+1 broken)
    same = tmp_path / "same"
    (same / "train").mkdir(parents=True)
    (same / "train" / "a").symlink_to(media_dir / "train" / sorted(os.listdir(media_dir / "train"))[1])
    (same / "test").symlink_to(same / "train")
    result = console(
        "avbert-train", "--recipe", "kinetics-sounds", "--data_dir", str(same), "--model", str(model_dir),
        "--output_dir", str(tmp_path / "o"),
    )  # fmt: skip
    assert result.returncode == 1 and "share 2 files" in result.stderr, result.stderr[-2000:]


def test_max_train_samples_is_stratified():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    chosen = stratified_subset(labels, 10, seed=0)
    assert [labels[i] for i in chosen].count(0) == 5 and [labels[i] for i in chosen].count(2) == 2
    assert stratified_subset(labels, 10, seed=0) == chosen and len(set(chosen)) == 10
    assert stratified_subset(labels, None) == list(range(100))


# ---------------------------------------------------------------------------------------------------------------------
# Item 4: every container, never a non-media file


def test_every_container_is_taken_and_everything_dropped_is_reported(tmp_path, caplog):
    import av
    import numpy as np

    folder = tmp_path / "train" / "class_a"
    folder.mkdir(parents=True)
    for suffix, codec in ((".mkv", "mpeg4"), (".webm", "libvpx"), (".avi", "mpeg4"), (".mov", "mpeg4"), ("", "mpeg4")):
        path = folder / f"clip{suffix or '_without_suffix'}"
        fmt = {"": "matroska", ".mkv": "matroska", ".webm": "webm", ".avi": "avi", ".mov": "mov"}[suffix]
        with av.open(str(path), "w", format=fmt) as container:
            stream = container.add_stream(codec, rate=15)
            stream.width = stream.height = 32
            stream.pix_fmt = "yuv420p"
            for _ in range(3):
                frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    (folder / "readme.txt").write_text("ANSI art is a video to FFmpeg")
    (folder / "notes").write_text("no suffix, not media")
    (folder / "thumb.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "train" / "loose.mp4").write_bytes(b"")
    kept, dropped = media_files(folder)
    assert sorted(p.name for p in kept) == ["clip.avi", "clip.mkv", "clip.mov", "clip.webm", "clip_without_suffix"]
    assert {p.name: reason.split(" (")[0] for p, reason in dropped} == {
        "readme.txt": "not a media file",
        "thumb.jpg": "not a media file",
        "notes": "not readable media",
    }
    with caplog.at_level("WARNING"):
        dataset = load_media_dataset("kinetics-sounds", tmp_path, "train")  # was: *.mp4 only
    assert len(dataset) == 5
    for name in ("readme.txt", "thumb.jpg", "notes", "loose.mp4: not in a class folder"):
        assert name in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# Item 5: skip-and-replace; avbert-prepare check


def test_a_batch_whose_files_all_fail_is_replaced(media_dir, model_dir):
    rows = load_media_dataset("kinetics-sounds", media_dir, "train")
    bad = [i for i, path in enumerate(rows["path"]) if path.endswith("zz_broken.mp4")]
    processor = AVBertProcessor.from_pretrained(model_dir)
    dataset = MediaDataset(rows, MediaTransform(processor, "audio-visual", train=False))
    collator = AVBertDataCollator(report_skipped=True)
    batch = collator([dataset[bad[0]]])  # a batch of one bad file: raised RuntimeError before
    assert batch["pixel_values"].shape[0] == 1 and "zz_broken.mp4" in batch["skipped_files"][0]


def test_prepare_check_writes_the_bad_files(media_dir, tmp_path):
    silent = tmp_path / "silent.mp4"
    make_silent_video(silent)
    data = tmp_path / "data" / "train" / "class_a"
    data.mkdir(parents=True)
    for video in sorted((media_dir / "train").rglob("*.mp4"))[:3]:  # the broken one is among the first class's
        (data / video.name).symlink_to(video)
    (data / "silent.mp4").symlink_to(silent)
    result = console(
        "avbert-prepare", "check", "--source", str(tmp_path / "data"), "--recipe", "kinetics-sounds",
        "--output-dir", str(tmp_path / "check"),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # bad files found
    rows = (tmp_path / "check" / "bad_files.csv").read_text().splitlines()
    assert rows[0] == "path,reason" and len(rows) == 3
    assert any("zz_broken.mp4" in row for row in rows) and any("silent.mp4" in row and "audio" in row for row in rows)
    visual = console(
        "avbert-prepare", "check", "--source", str(tmp_path / "data"), "--recipe", "ucf101",
        "--output-dir", str(tmp_path / "check_visual"),
    )  # fmt: skip
    assert visual.returncode == 1
    assert (
        len((tmp_path / "check_visual" / "bad_files.csv").read_text().splitlines()) == 2
    )  # a silent video is fine for UCF101


def make_silent_video(path: Path) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=15)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for _ in range(8):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------------------------------------------------------------
# Item 6: checkpoints that survive SIGKILL during a save


def _fake_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10}))
    return path


def test_resume_skips_an_incomplete_checkpoint(tmp_path):
    _fake_checkpoint(tmp_path, 2)
    good = _fake_checkpoint(tmp_path, 4)
    cut = _fake_checkpoint(tmp_path, 6, complete=False)
    torn = _fake_checkpoint(tmp_path, 8)
    (torn / "trainer_state.json").write_text('{"global_st')  # killed while writing the last file
    assert not is_complete_checkpoint(cut) and not is_complete_checkpoint(torn)
    assert last_complete_checkpoint(tmp_path, remove_incomplete=False) == good
    assert resolve_resume("true", tmp_path) == str(good)
    assert not cut.exists() and not torn.exists()  # removed so the resumed run can write them again
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_resume("last", tmp_path / "empty")


KILL_SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests!r})
import torch
from transformers import Trainer
from avbert import AVBertConfig, AVBertForAudioClassification
from avbert.training.cli import resolve_resume
from avbert.training.recipes import training_arguments
from avbert.training.trainers import AVBertTrainer
from test_training_recipes import TINY, RandomClips, finetune_recipe

out, mode = sys.argv[1], sys.argv[2]
if mode == "victim":  # hang inside the 2nd checkpoint's save, after the weights, before trainer_state.json
    original = Trainer._save_rng_state
    def slow(self, output_dir):
        original(self, output_dir)
        if self.state.global_step == 4:
            open(os.path.join(out, "SAVING"), "w").close()
            time.sleep(120)
    Trainer._save_rng_state = slow
torch.manual_seed(0)
recipe = finetune_recipe(modality="audio")
args = training_arguments(recipe, out, use_cpu=True, dataloader_num_workers=0, report_to="none", eval_strategy="no",
                          save_strategy="steps", save_steps=2, logging_steps=1, max_steps=6, disable_tqdm=True)
trainer = AVBertTrainer(model=AVBertForAudioClassification(AVBertConfig(**TINY)), args=args, recipe=recipe,
                        train_dataset=RandomClips(8, video=False))
resume = resolve_resume("true", out) if mode == "resume" else None
print("RESUME", resume)
trainer.train(resume_from_checkpoint=resume)
print("STEP", trainer.state.global_step)
"""


def test_sigkill_during_a_save_resumes_from_the_last_complete_checkpoint(tmp_path):
    import signal
    import time

    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    victim = subprocess.Popen([sys.executable, str(script), str(out), "victim"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "SAVING").exists():
        assert victim.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert (out / "checkpoint-4" / "model.safetensors").is_file()
    assert not (out / "checkpoint-4" / "trainer_state.json").exists()  # cut off in the middle of the save
    resumed = subprocess.run([sys.executable, str(script), str(out), "resume"], env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # was: "Can't find a valid checkpoint" / a broken load
    assert f"RESUME {out / 'checkpoint-2'}" in resumed.stdout and "STEP 6" in resumed.stdout
    assert is_complete_checkpoint(out / "checkpoint-4") and is_complete_checkpoint(out / "checkpoint-6")


def test_raising_max_steps_on_resume_is_said(tmp_path, caplog):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from avbert.training.callbacks import ResumedScheduleCallback

    checkpoint = _fake_checkpoint(tmp_path, 10)
    state = TrainerState(max_steps=20, global_step=10)
    with caplog.at_level("WARNING"):
        ResumedScheduleCallback(checkpoint).on_train_begin(
            TrainingArguments(str(tmp_path), report_to="none"), state, TrainerControl()
        )
    assert "lr 0" in caplog.text and "not extended" in caplog.text


# The plain `Trainer` (issue 11, section 3): default TrainingArguments, MediaDataset keeps its columns.
def test_plain_trainer_with_default_training_arguments(media_dir, model_dir, tmp_path):
    from transformers import Trainer, TrainingArguments

    processor = AVBertProcessor.from_pretrained(model_dir)
    model = AVBertForVideoClassification.from_pretrained(model_dir)
    rows = load_media_dataset("kinetics-sounds", media_dir, "test")
    trainer = Trainer(
        model=model,
        args=TrainingArguments(tmp_path, max_steps=1, per_device_train_batch_size=2, report_to="none", use_cpu=True),
        train_dataset=MediaDataset(rows, MediaTransform(processor, "audio-visual", train=True)),
        data_collator=AVBertDataCollator(),
    )
    assert trainer.args.remove_unused_columns  # the default; with_transform rows lost their `path` column to it
    trainer.train()
    assert trainer.state.global_step == 1


# ---------------------------------------------------------------------------------------------------------------------
# Item 2: the documented launchers are data parallel on a machine without CUDA

DDP_CLI_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch
import torch.distributed as dist
from transformers.training_args import ParallelMode
from avbert import AVBertConfig, AVBertForAudioClassification
from avbert.training.distributed import release_process_group
from avbert.training.trainers import AVBertTrainer
from avbert.training.train import parse_args
from test_training_recipes import TINY, RandomClips

out = sys.argv[1]
# As `torchrun -m avbert.training.train` parses it: no --use_cpu on the command line.
data_args, args, recipe = parse_args(["--recipe", "esc50", "--data_dir", "d", "--model", "m", "--output_dir", out,
                                      "--max_steps", "1", "--report_to", "none", "--dataloader_num_workers", "0",
                                      "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true"])
torch.manual_seed(0)
model = AVBertForAudioClassification(AVBertConfig(**TINY))
trainer = AVBertTrainer(model=model, args=args, recipe=recipe, train_dataset=RandomClips(128, video=False))
assert dist.is_initialized() and dist.get_world_size() == 2 and args.parallel_mode == ParallelMode.DISTRIBUTED
batches = len(trainer.get_train_dataloader())
trainer.train()
trainer.save_model()
with open(os.path.join(out, f"rank{{args.process_index}}.json"), "w") as f:
    json.dump({{"world_size": args.world_size, "per_device": args.per_device_train_batch_size, "batches": batches,
               "global_batch": args.per_device_train_batch_size * args.world_size}}, f)
del trainer
release_process_group()
"""


@pytest.mark.parametrize(
    "launcher",
    [
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
        ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"],  # accelerate's CPU multi-process
    ],
    ids=["torchrun", "accelerate"],
)
def test_launchers_on_cpu_are_data_parallel_without_use_cpu(tmp_path, launcher):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_CLI_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "ACCELERATE_USE_CPU")}
    env.update(PYTHONPATH=str(REPO / "src"), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    command = [sys.executable, *launcher, str(script), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    for rank in ranks:  # was: world size 1 in each process, each with the whole global batch of 128
        assert rank["world_size"] == 2 and rank["per_device"] == 64 and rank["global_batch"] == 128
        assert rank["batches"] == 1  # each process reads half of the 128 rows
    assert len(list(tmp_path.glob("model.safetensors"))) == 1  # one set of outputs, from rank 0


def test_single_process_accelerate_cpu_launch_is_refused(monkeypatch):
    from avbert.training.cli import refuse_single_process_accelerate_cpu

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # what `accelerate launch --cpu --num_processes 2` sets
    with pytest.raises(ValueError, match="starts a single process"):
        refuse_single_process_accelerate_cpu()
    monkeypatch.delenv("MASTER_ADDR")
    refuse_single_process_accelerate_cpu()  # --num_processes 1: fine
