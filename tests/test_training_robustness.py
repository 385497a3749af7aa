"""Checkpoints and model folders you can trust at scale (issue 20): a full disk while saving, SIGTERM from a
scheduler, a checkpoint killed right after its trainer state, bit flips in the weights and a config.json of another
model type. Each is made the way a run meets it: a real tmpfs that fills up, a real signal to a real `avbert-train`,
bytes flipped in a saved file."""

from __future__ import annotations

import errno
import json
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_training_cli import BIN, REPO, TRAIN_FLAGS, media_dir, model_dir  # noqa: F401  (fixtures)
from test_training_recipes import TINY, RandomClips, finetune_recipe

from avbert import AVBertConfig, AVBertFeatureExtractor, AVBertForAudioClassification
from avbert.training.cli import CheckpointSaveError, is_complete_checkpoint, last_complete_checkpoint
from avbert.training.recipes import training_arguments
from avbert.training.trainers import AVBertTrainer


def tiny_trainer(output_dir: Path, **overrides) -> AVBertTrainer:
    torch.manual_seed(0)
    recipe = finetune_recipe(modality="audio")
    settings = dict(
        use_cpu=True,
        dataloader_num_workers=0,
        report_to="none",
        eval_strategy="no",
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        max_steps=4,
        disable_tqdm=True,
    )
    callbacks = overrides.pop("callbacks", None)
    args = training_arguments(recipe, str(output_dir), **{**settings, **overrides})
    model = AVBertForAudioClassification(AVBertConfig(**TINY))
    return AVBertTrainer(
        model=model, args=args, recipe=recipe, train_dataset=RandomClips(8, video=False), callbacks=callbacks
    )


# ---------------------------------------------------------------------------------------------------------------------
# a. A full disk while writing a checkpoint


def test_a_failed_optimizer_write_names_the_checkpoint_and_the_full_disk(tmp_path, monkeypatch):
    """`torch.save` of `optimizer.pt` failing with ENOSPC (patched): one clear error; resume skips the checkpoint."""
    original_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt") and "checkpoint-4" in str(f):
            Path(f).write_bytes(b"PK\x03\x04 half a zip")  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, "No space left on device")
        return original_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    trainer = tiny_trainer(tmp_path)
    with pytest.raises(CheckpointSaveError) as caught:
        trainer.train()
    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC
    assert str(tmp_path / "checkpoint-4") in message and "optimizer.pt" in message
    assert "disk is full" in message and "--resume_from_checkpoint true" in message
    assert not is_complete_checkpoint(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


# What `Trainer._save_checkpoint` writes after the model folder (`save_model`).
AFTER_THE_MODEL = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 8 MiB tmpfs (needs root and mount rights: skipped otherwise)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)  # a failed write may hold a file open


def test_a_really_full_disk_during_a_checkpoint_is_a_clear_error(tmp_path, small_tmpfs):
    """The trial's failure on a real file system: room for the weights of checkpoint-4, not for its optimizer state."""
    probe = tiny_trainer(tmp_path / "probe", max_steps=2)
    probe.train()
    sizes = {path.name: path.stat().st_size for path in (tmp_path / "probe" / "checkpoint-2").iterdir()}
    out = small_tmpfs / "run"
    ballast = small_tmpfs / "ballast"

    from transformers import TrainerCallback

    class FillDisk(TrainerCallback):
        """After checkpoint-2, leave room for checkpoint-4's weights (and small files) only."""

        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                free = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
                model_files = [size for name, size in sizes.items() if name not in AFTER_THE_MODEL]
                room = sum(model_files) + 4096 * len(model_files) + 64 * 1024  # whole pages, and a bit
                ballast.write_bytes(b"\0" * max(0, free - room))

    trainer = tiny_trainer(out, callbacks=[FillDisk()])
    with pytest.raises(CheckpointSaveError) as caught:
        trainer.train()
    message = str(caught.value)
    assert "disk is full" in message and "ENOSPC" in message, message
    # The file being written is named; which one fills the disk depends on the page accounting of the file system.
    written = re.search(r"checkpoint-4 \(writing ([^)]+)\)", message)
    assert str(out / "checkpoint-4") in message and written and written.group(1) in sizes, message
    assert is_complete_checkpoint(out / "checkpoint-2") and not is_complete_checkpoint(out / "checkpoint-4")
    ballast.unlink()
    assert last_complete_checkpoint(out) == out / "checkpoint-2" and not (out / "checkpoint-4").exists()


# ---------------------------------------------------------------------------------------------------------------------
# b. SIGTERM (a scheduler's warning before SIGKILL) saves a checkpoint, exits 143, and the run resumes from it


def _wait_for_line(process: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if needle in line:
                return lines
    raise AssertionError(f"no {needle!r} within {timeout} s; output: {''.join(lines)[-2000:]}")


def test_sigterm_saves_a_checkpoint_exits_143_and_the_run_resumes(media_dir, model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    command = [
        str(BIN / "avbert-train"), "--recipe", "kinetics-sounds", "--data_dir", str(media_dir),
        "--model", str(model_dir), "--output_dir", str(out), "--max_steps", "6", "--logging_steps", "1",
        *TRAIN_FLAGS,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false"}
    # save_strategy "no" (TRAIN_FLAGS): the only checkpoint is the one SIGTERM asks for. The signal goes to the main
    # process, as Kubernetes sends it (2 DataLoader workers run beside it: docs/training.md says why not to them).
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_line(process, "'loss'", timeout=240)  # the first logged step: training is under way
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)  # well inside a 30 s grace period for this tiny model
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr[-3000:]
    assert "Received SIGTERM: saving a checkpoint" in stderr
    checkpoints = [path for path in out.iterdir() if path.name.startswith("checkpoint-")]
    assert len(checkpoints) == 1 and is_complete_checkpoint(checkpoints[0]), stderr[-3000:]
    step = int(checkpoints[0].name.split("-")[1])
    assert 1 <= step < 6 and f"stopped by SIGTERM at step {step} of 6" in stderr
    assert (checkpoints[0] / "processor_config.json").is_file()  # a complete model folder
    assert not (out / "train_results.json").exists()  # no final save or evaluation after the signal

    resumed = subprocess.run(
        [*command, "--resume_from_checkpoint", "true"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    resumed_steps = [entry["step"] for entry in state["log_history"] if "loss" in entry and entry["step"] > step]
    assert min(resumed_steps) == step + 1  # continued from the SIGTERM checkpoint, not from the start


def test_the_previous_sigterm_handler_is_back_after_train(tmp_path):
    def previous(number, frame):
        pass

    before = signal.signal(signal.SIGTERM, previous)
    try:
        tiny_trainer(tmp_path, max_steps=1, save_strategy="no").train()
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, before)


# ---------------------------------------------------------------------------------------------------------------------
# c. A checkpoint killed right after its trainer state has its processor (a complete model folder)

KILLED_AFTER_STATE = """
import os, sys, time
sys.path.insert(0, {tests!r})
import torch
from transformers import TrainerCallback
from avbert import AVBertConfig, AVBertFeatureExtractor, AVBertForAudioClassification
from avbert.training.callbacks import SaveProcessorCallback
from avbert.training.recipes import training_arguments
from avbert.training.trainers import AVBertTrainer
from test_training_recipes import TINY, RandomClips, finetune_recipe

out = sys.argv[1]

class HangAfterTheState(TrainerCallback):  # before SaveProcessorCallback: the moment the trial's run was killed
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 4:
            open(os.path.join(out, "SAVED_STATE"), "w").close()
            time.sleep(120)

torch.manual_seed(0)
recipe = finetune_recipe(modality="audio")
args = training_arguments(recipe, out, use_cpu=True, dataloader_num_workers=0, report_to="none", eval_strategy="no",
                          save_strategy="steps", save_steps=2, max_steps=6, disable_tqdm=True)
processor = AVBertFeatureExtractor(num_clips=TINY["num_clips"], feature_size=16, num_time_frames=16)
trainer = AVBertTrainer(model=AVBertForAudioClassification(AVBertConfig(**TINY)), args=args, recipe=recipe,
                        train_dataset=RandomClips(8, video=False),
                        callbacks=[HangAfterTheState(), SaveProcessorCallback(processor)])
trainer.train()
"""


def test_a_checkpoint_killed_after_its_trainer_state_has_its_processor(tmp_path):
    from transformers import AutoFeatureExtractor, pipeline

    script = tmp_path / "killed.py"
    script.write_text(KILLED_AFTER_STATE.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    victim = subprocess.Popen([str(BIN / "python"), str(script), str(out)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "SAVED_STATE").exists():
            assert victim.poll() is None, victim.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        victim.kill()
        victim.wait()
    checkpoint = out / "checkpoint-4"
    assert is_complete_checkpoint(checkpoint)  # trainer_state.json is there: it counts as complete...
    assert last_complete_checkpoint(out, remove_incomplete=False) == checkpoint
    assert isinstance(AutoFeatureExtractor.from_pretrained(checkpoint), AVBertFeatureExtractor)  # ...and it is
    classifier = pipeline("audio-classification", model=str(checkpoint), device="cpu")
    sound = torch.randn(44100).numpy()
    assert len(classifier({"raw": sound, "sampling_rate": 44100}, top_k=2)) == 2


# ---------------------------------------------------------------------------------------------------------------------
# d. Bit flips in model.safetensors are caught by the checksum saved with the weights


def flip_a_tensor_byte(path: Path) -> None:
    """Flip one bit in the middle of the tensor data (after the 8-byte length and the JSON header)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[(start + len(data)) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_weights_is_a_clear_error_naming_the_file(tmp_path):
    from transformers import AutoModelForAudioClassification

    import avbert  # noqa: F401  (the Auto classes)

    torch.manual_seed(0)
    model = AVBertForAudioClassification(AVBertConfig(**TINY))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors.sha256").read_text().endswith("  model.safetensors\n")
    AutoModelForAudioClassification.from_pretrained(tmp_path)  # untouched: loads
    flip_a_tensor_byte(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors is corrupted: its SHA-256 differs"):
        AutoModelForAudioClassification.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is corrupted"):
        AVBertForAudioClassification.from_pretrained(tmp_path)
    # A folder saved without the checksum (older saves, conversions) loads as before, unchecked.
    (tmp_path / "model.safetensors.sha256").unlink()
    AVBertForAudioClassification.from_pretrained(tmp_path)


def test_resuming_a_checkpoint_with_flipped_bits_is_refused(tmp_path):
    tiny_trainer(tmp_path, max_steps=2).train()
    checkpoint = tmp_path / "checkpoint-2"
    flip_a_tensor_byte(checkpoint / "model.safetensors")
    with pytest.raises(ValueError, match=r"checkpoint-2/model\.safetensors is corrupted"):
        tiny_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=str(checkpoint))


# ---------------------------------------------------------------------------------------------------------------------
# e. config.json of an AVBERT folder with another model_type, or none


@pytest.fixture
def mislabeled_folder(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    torch.manual_seed(0)
    AVBertForAudioClassification(AVBertConfig(**TINY)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    if request.param is None:
        del config["model_type"]
    else:
        config["model_type"] = request.param
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    ("mislabeled_folder", "found"),
    [("bert", "has model_type 'bert'"), (None, "has no model_type")],
    indirect=["mislabeled_folder"],
)
def test_a_wrong_model_type_is_an_error_naming_config_json(mislabeled_folder, found):
    expected = f'{mislabeled_folder / "config.json"} {found}, but it describes an AVBERT model: set "model_type"'
    with pytest.raises(ValueError) as caught:
        AVBertForAudioClassification.from_pretrained(mislabeled_folder)
    assert expected in str(caught.value)
    with pytest.raises(ValueError, match="model_type"):
        AVBertConfig.from_pretrained(mislabeled_folder)


@pytest.mark.parametrize("mislabeled_folder", ["bert"], indirect=True)
def test_avbert_train_says_which_field_of_config_json_is_wrong(mislabeled_folder, tmp_path):
    result = subprocess.run(
        [str(BIN / "avbert-train"), "--recipe", "esc50", "--data_dir", str(tmp_path), "--model", str(mislabeled_folder),
         "--output_dir", str(tmp_path / "run")],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")}, cwd=REPO, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "avbert-train: error:" in result.stderr and "config.json has model_type 'bert'" in result.stderr
    assert "custom code" not in result.stderr  # was: transformers' "run the custom code? [y/N]" prompt, then EOFError


@pytest.mark.parametrize("mislabeled_folder", [None], indirect=True)
def test_trust_remote_code_on_a_folder_without_model_type_names_config_json(mislabeled_folder, tmp_path):
    """The Auto classes without trust_remote_code ask to run the folder's code (transformers decides before any AVBERT
    code runs: docs/training.md); with it, the folder's own AVBertConfig names the field."""
    script = (
        "import sys\nfrom transformers import AutoModelForAudioClassification\n"
        "try:\n    AutoModelForAudioClassification.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "except ValueError as error:\n    print('ERROR', error)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # the folder's code only
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run([str(BIN / "python"), "-c", script, str(mislabeled_folder)], env=env, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert f"ERROR {mislabeled_folder / 'config.json'} has no model_type" in result.stdout, result.stderr[-3000:]


DDP_SIGTERM_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import torch
from transformers import TrainerCallback
from avbert import AVBertConfig, AVBertForAudioClassification
from avbert.training.cli import exit_status
from avbert.training.recipes import training_arguments
from avbert.training.trainers import AVBertTrainer
from test_training_recipes import TINY, RandomClips, finetune_recipe

out = sys.argv[1]

class Started(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            pid_file = os.path.join(out, f"rank{{os.environ['RANK']}}.pid")
            with open(pid_file + ".part", "w") as f:
                f.write(str(os.getpid()))
            os.replace(pid_file + ".part", pid_file)

def run():
    torch.manual_seed(0)
    recipe = finetune_recipe(modality="audio")
    args = training_arguments(recipe, out, use_cpu=True, dataloader_num_workers=0, report_to="none", eval_strategy="no",
                              save_strategy="no", max_steps=2000, disable_tqdm=True, per_device_train_batch_size=2)
    trainer = AVBertTrainer(model=AVBertForAudioClassification(AVBertConfig(**TINY)), args=args, recipe=recipe,
                            train_dataset=RandomClips(8, video=False), callbacks=[Started()])
    trainer.train()

code = exit_status("ddp", run)
with open(os.path.join(out, f"rank{{os.environ['RANK']}}.exit"), "w") as f:
    f.write(str(code))
sys.exit(code)
"""


def test_sigterm_under_torchrun_saves_one_checkpoint_of_the_same_step_on_every_rank(tmp_path):
    """SIGTERM to one rank only (rank 1, which does not write checkpoints): the ranks agree on the step (all-reduce),
    rank 0 writes the checkpoint and both exit 143, none waiting in a collective for the other."""
    script = tmp_path / "ddp_sigterm.py"
    script.write_text(DDP_SIGTERM_SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "ACCELERATE_USE_CPU")}
    env.update(PYTHONPATH=str(REPO / "src"), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    command = [str(BIN / "python"), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launcher = subprocess.Popen([*command, str(script), str(out)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (out / "rank1.pid").exists():
            assert launcher.poll() is None, launcher.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(int((out / "rank1.pid").read_text()), signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert [(out / f"rank{rank}.exit").read_text() for rank in range(2)] == ["143", "143"], stderr[-3000:]
    checkpoints = [path for path in out.iterdir() if path.name.startswith("checkpoint-")]
    assert len(checkpoints) == 1 and is_complete_checkpoint(checkpoints[0]), stderr[-3000:]
