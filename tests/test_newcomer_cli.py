"""The console scripts as a newcomer runs them (their installed entry points, in subprocesses): wrong input gets one
line that says what to do and a non-zero exit, the recipes do not fill the disk, and nothing warns for no reason
(issue 24)."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_newcomer_paths import ffmpeg_clip, needs_ffmpeg
from test_training_recipes import TINY, RandomClips
from transformers import AutoModel

from avbert import AVBertConfig, AVBertForVideoClassification
from avbert.training.recipes import RECIPES, Recipe, recipe_training_defaults, training_arguments
from avbert.training.trainers import AVBertTrainer

BIN = Path(sys.executable).parent  # the environment's console scripts sit beside its interpreter


def run_script(name: str, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    script = BIN / name
    if not script.is_file():
        pytest.skip(f"{name} is not installed in this environment (pip install -e .)")
    return subprocess.run([str(script), *arguments], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_one_line_error(completed: subprocess.CompletedProcess, *fragments: str) -> None:
    assert completed.returncode != 0, completed.stdout
    assert "Traceback" not in completed.stderr, completed.stderr
    error = [line for line in completed.stderr.splitlines() if ": error: " in line]
    assert len(error) == 1, completed.stderr
    for fragment in fragments:
        assert fragment in error[0], error[0]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    AVBertForVideoClassification(AVBertConfig(**TINY)).save_pretrained(folder)
    return folder


def test_params_refuses_a_missing_config_and_a_folder_without_one(tmp_path, model_folder):
    assert_one_line_error(run_script("avbert-params", "--config", "missing", cwd=tmp_path), "missing: no such file")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_script("avbert-params", "--config", "empty", cwd=tmp_path), "has no config.json")
    (tmp_path / "preprocessor_config.json").write_text('{"feature_extractor_type": "AVBertFeatureExtractor"}')
    assert_one_line_error(
        run_script("avbert-params", "--config", "preprocessor_config.json", cwd=tmp_path), "not an AVBERT config"
    )
    counted = run_script("avbert-params", "--config", str(model_folder), cwd=tmp_path)
    assert counted.returncode == 0 and counted.stdout.count("\n| ") == 8  # the 8 sharing schemes of that model


def test_convert_says_a_text_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("every checkpoint is in the cloud\n")
    completed = run_script("avbert-convert", "notes.txt", "out", "--task", "kinetics-sounds", cwd=tmp_path)
    assert_one_line_error(completed, "notes.txt: not a PyTorch checkpoint", "give the original's .pyth file")


def test_prepare_help_lists_the_commands_of_its_examples(tmp_path):
    completed = run_script("avbert-prepare", "--help", cwd=tmp_path)
    assert completed.returncode == 0
    usage, examples = completed.stdout.split("examples:")
    for command in {line.split()[1] for line in examples.splitlines() if line.strip().startswith("avbert-prepare")}:
        assert command in usage, command


@needs_ffmpeg
def test_prepare_check_accepts_the_folder_prepare_folder_wrote(tmp_path):
    for label in ("low", "high"):
        (tmp_path / "videos" / label).mkdir(parents=True)
        ffmpeg_clip(tmp_path / "videos" / label / "clip.mp4", seconds=1)
    arranged = run_script("avbert-prepare", "folder", "--source", "videos", "--output-dir", "mine", cwd=tmp_path)
    assert arranged.returncode == 0 and (tmp_path / "mine" / "dataset.csv").is_file()
    checked = run_script("avbert-prepare", "check", "--source", "mine", "--output-dir", "check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "2 good files, 0 bad" in checked.stdout
    assert "not media, left out as training leaves them out: 1 file(s), e.g. dataset.csv" in checked.stdout


def test_demo_help_describes_every_option(tmp_path):
    completed = run_script("avbert-demo", "--help", cwd=tmp_path)
    assert completed.returncode == 0
    entries = re.split(r"\n  (?=-)", completed.stdout.split("options:", 1)[1])
    for option in ("--output-dir", "--videos-per-class", "--epochs", "--seed"):
        (entry,) = [entry for entry in entries if entry.startswith(option)]
        description = entry.split(maxsplit=2)[2]  # after the option and its metavar
        assert "default" in description and len(description.split()) > 3, entry


@pytest.mark.parametrize("script", ["avbert-train", "avbert-pretrain"])
def test_training_commands_require_an_output_dir(script, tmp_path, model_folder):
    arguments = ["--model", str(model_folder), "--data_dir", str(tmp_path)]
    if script == "avbert-train":
        arguments = ["--recipe", "kinetics-sounds", *arguments]
    completed = run_script(script, *arguments, cwd=tmp_path)
    assert_one_line_error(completed, "--output_dir")
    assert not (tmp_path / "trainer_output").exists()


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_keep_two_checkpoints(name):
    defaults = recipe_training_defaults(RECIPES[name])
    assert defaults["save_strategy"] == "epoch" and defaults["save_total_limit"] == 2
    assert not defaults.get("load_best_model_at_end")  # the eval split is the test split: no picking on it


def test_a_recipe_run_keeps_the_last_two_checkpoints_and_does_not_warn_about_pinning(tmp_path):
    recipe = Recipe(
        name="tiny",
        modality="audio-visual",
        protocol="finetune",
        base_lr=1e-2,
        finetune_lr=1e-3,
        weight_decay=0.0,
        finetune_weight_decay=0.0,
        num_epochs=4,
        train_batch_size=4,
        eval_batch_size=4,
    )
    overrides = {"eval_strategy": "no", "report_to": "none", "dataloader_num_workers": 0, "use_cpu": True}
    args = training_arguments(recipe, tmp_path, **overrides)
    model = AVBertForVideoClassification(AVBertConfig(**TINY))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AVBertTrainer(model=model, args=args, recipe=recipe, train_dataset=RandomClips(4)).train()
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert not [warning for warning in caught if "pin_memory" in str(warning.message)]


def test_automodel_of_a_classifier_folder_loads_without_a_report(model_folder, capfd):
    capfd.readouterr()
    backbone = AutoModel.from_pretrained(model_folder)
    output = "".join(capfd.readouterr())
    assert type(backbone).__name__ == "AVBertModel"
    assert "LOAD REPORT" not in output and "UNEXPECTED" not in output, output


def test_new_heads_for_other_classes_without_the_num_labels_warning(model_folder, capfd):
    from avbert.training.train import load_model

    capfd.readouterr()
    model = load_model(str(model_folder), RECIPES["kinetics-sounds"], ["a", "b", "c", "d", "e"])
    assert model.config.num_labels == 5 and model.clip_head.classifier.out_features == 5
    assert "incompatible" not in "".join(capfd.readouterr())


def test_saved_weights_have_the_mode_of_the_other_files(model_folder):
    umask = os.umask(0)
    os.umask(umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in model_folder.iterdir() if path.is_file()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o666 & ~umask, modes
