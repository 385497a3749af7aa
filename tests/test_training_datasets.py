"""The training command lines on a `datasets` dataset (`--dataset_name videofolder --data_dir ...`, or a loaded
`Dataset` / `DatasetDict` through the Python `run` APIs): load_dataset -> processor -> Trainer -> a model folder that
AutoModel and the pipeline load. Generated videos, tiny models, nothing downloaded."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, Features, Video, load_dataset
from test_training_cli import TRAIN_FLAGS, console, media_dir, model_dir  # noqa: F401  (fixtures)
from test_training_recipes import TINY

from avbert.cli import UsageError
from avbert.training import evaluate, pretrain, train

pytest.importorskip("torchcodec")

RECIPE = ("--recipe", "kinetics-sounds")


def test_train_and_evaluate_a_videofolder_dataset(media_dir, model_dir, tmp_path):  # noqa: F811
    from transformers import AutoModelForVideoClassification, pipeline

    out = tmp_path / "run"
    source = ("--dataset_name", "videofolder", "--data_dir", str(media_dir))
    result = console(
        "avbert-train", *RECIPE, *source, "--model", str(model_dir), "--output_dir", str(out),
        "--num_train_epochs", "1", *TRAIN_FLAGS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((out / "train_results.json").read_text())
    # The broken file of the videofolder is decoded (in a DataLoader worker), skipped and reported as for folders.
    assert trained["num_skipped_files"] == 1 and "zz_broken.mp4" in trained["skipped_files"][0]
    names = load_dataset("videofolder", data_dir=str(media_dir), split="train").features["label"].names
    model = AutoModelForVideoClassification.from_pretrained(out)
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == names  # from the ClassLabel
    video = next((media_dir / "test").rglob("*.mp4"))
    predictions = pipeline("video-classification", model=str(out))(str(video), top_k=2)
    assert len(predictions) == 2 and {p["label"] for p in predictions} <= set(names)

    evaluated = console(
        "avbert-evaluate", *RECIPE, "--model", str(out), "--dataset-name", "videofolder", "--data-dir",
        str(media_dir), "--output-dir", str(tmp_path / "eval"), "--device", "cpu",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_videos"] == 4 and metrics["dataset_name"] == "videofolder"  # the test split: 1 per class
    assert metrics["class_names"] == names


@pytest.mark.parametrize(
    ("script", "flags", "message"),
    [
        ("avbert-train", ("--video_column_name", "clip"), "--video_column_name clip: split 'train' has no such column"),
        ("avbert-train", ("--label_column_name", "video"), "--label_column_name video: the column of split 'train' is"),
        ("avbert-train", ("--eval_split_name", "validation"), "--eval_split_name validation: the dataset has no such"),
        ("avbert-evaluate", ("--label-column-name", "nope"), "--label_column_name nope: split 'test' has no such col"),
        ("avbert-evaluate", ("--split", "dev"), "--split dev: the dataset has no such split (splits: train, test)"),
        ("avbert-train", ("--layout", "folder"), "--layout, --train_shards and --eval_shards are for"),
        ("avbert-evaluate", ("--layout", "folder"), "--layout is for --data-dir folders"),
    ],
)
def test_a_wrong_column_or_split_is_a_one_line_error(script, flags, message, media_dir, model_dir, tmp_path, capsys):  # noqa: F811
    # In process: the console scripts' own main().
    main, out = (train.main, "--output_dir") if script == "avbert-train" else (evaluate.main, "--output-dir")
    source = ("--dataset_name", "videofolder", "--data_dir", str(media_dir))
    assert main([*RECIPE, *source, "--model", str(model_dir), out, str(tmp_path / "o"), *flags]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"{script}: error: {message}"), error


def test_an_unloadable_dataset_name_is_a_one_line_error(model_dir, tmp_path):  # noqa: F811
    result = console(
        "avbert-train", *RECIPE, "--dataset_name", "videofolder", "--data_dir", str(tmp_path / "none"),
        "--model", str(model_dir), "--output_dir", str(tmp_path / "o"),
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "avbert-train: error: --dataset_name videofolder: cannot load it" in result.stderr


def _run_args(model_dir, out) -> list[str]:  # noqa: F811
    return [*RECIPE, "--model", str(model_dir), "--output_dir", str(out), *TRAIN_FLAGS]


def test_python_api_refuses_a_bad_dataset_by_column_and_split(media_dir, model_dir, tmp_path):  # noqa: F811
    videos = sorted(str(p) for p in (media_dir / "train").rglob("*_0*.mp4"))
    as_strings = Dataset.from_dict({"video": videos, "label": ["a"] * len(videos)})
    with pytest.raises(UsageError, match="--label_column_name label: the column of split 'train' is Value, not"):
        train.run(_run_args(model_dir, tmp_path / "o"), dataset=as_strings)
    loaded = load_dataset("videofolder", data_dir=str(media_dir))
    empty = DatasetDict({"train": loaded["train"], "test": loaded["test"].select([])})
    with pytest.raises(UsageError, match="split 'test' of the dataset has no rows"):
        train.run(_run_args(model_dir, tmp_path / "o"), dataset=empty)
    loaded.save_to_disk(tmp_path / "saved")  # --dataset_name also takes a save_to_disk folder
    with pytest.raises(UsageError, match="--video_column_name clip: split 'train' has no such column"):
        saved = ["--dataset_name", str(tmp_path / "saved"), "--video_column_name", "clip"]
        train.run([*_run_args(model_dir, tmp_path / "o"), *saved])


def test_splits_that_share_a_file_are_refused(media_dir, model_dir, tmp_path):  # noqa: F811
    """As for folders: a file in both the train and the eval split (by path, or the same embedded bytes under another
    name, as a dataset saved with its media holds them) is a one-line error before any training."""
    loaded = load_dataset("videofolder", data_dir=str(media_dir))
    leaked = DatasetDict({"train": loaded["train"], "test": loaded["train"].select([0])})
    with pytest.raises(UsageError, match="the train and test splits share 1 files"):
        train.run(_run_args(model_dir, tmp_path / "o"), dataset=leaked)
    first, other = sorted((media_dir / "train").rglob("*.mp4"))[:2]
    features = loaded["train"].features
    embedded = DatasetDict(
        {
            name: Dataset.from_dict({"video": [{"bytes": path.read_bytes(), "path": alias}], "label": [0]}).cast(
                Features({"video": Video(decode=False), "label": features["label"]})
            )
            for name, path, alias in (("train", first, "a.mp4"), ("test", first, "b.mp4"))
        }
    )
    with pytest.raises(UsageError, match=r"share 1 files \(e\.g\. a\.mp4\)"):
        train.run(_run_args(model_dir, tmp_path / "o"), dataset=embedded)
    assert other.read_bytes() != first.read_bytes()  # distinct files pass the check (the other tests train on them)


def test_python_api_trains_on_a_loaded_dataset_with_a_held_out_part(media_dir, model_dir, tmp_path):  # noqa: F811
    # One split (as a videofolder of <class>/ folders gives): a seeded, stratified part is held out for evaluation.
    flat = load_dataset("videofolder", data_dir=str(media_dir / "train"), split="train")
    flat = flat.rename_column("video", "clip")
    argv = [*_run_args(model_dir, tmp_path / "run"), "--max_steps", "1", "--video_column_name", "clip"]
    metrics = train.run(argv, dataset=flat)
    assert 0 <= metrics["eval_accuracy"] <= 1 and (tmp_path / "run" / "model.safetensors").is_file()


def test_pretrain_on_a_loaded_dataset(media_dir, tmp_path, capsys):  # noqa: F811
    unlabeled = load_dataset("videofolder", data_dir=str(media_dir), split="test").remove_columns("label")
    out = tmp_path / "out"
    metrics = pretrain.run(
        [
            "--output-dir", str(out), "--config-overrides", json.dumps({**TINY, "num_negatives": 2}),
            "--num_clips", "2", "--short_side", "32", "--crop_size", "32", "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
        ],
        dataset=unlabeled,
    )  # fmt: skip
    assert math.isfinite(metrics["train_loss"]) and (out / "model.safetensors").is_file()
    with pytest.raises(UsageError, match="--video_column_name video: split 'train' has no such column"):
        pretrain.run(["--output-dir", str(out)], dataset=unlabeled.rename_column("video", "clip"))
    source = ["--dataset_name", "videofolder", "--data-dir", str(media_dir), "--train_split_name", "unlabeled"]
    tiny = ["--config-overrides", json.dumps(TINY), "--num_clips", "2", "--output-dir", str(out)]
    assert pretrain.main([*source, *tiny]) == 1
    error = capsys.readouterr().err
    assert "avbert-pretrain: error: --train_split_name unlabeled: the dataset has no such split" in error


SHARED = Path(os.environ.get("AVBERT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
ESC50 = SHARED / "data" / "esc50" / "audio"


@pytest.mark.skipif(not ESC50.is_dir(), reason=f"no ESC-50 clips in {ESC50}")
def test_the_audio_recipe_reads_an_audiofolder(tmp_path):
    """`--dataset_name audiofolder`: the esc50 recipe reads `--audio_column_name` (default `audio`)."""
    from avbert import AVBertConfig, AVBertFeatureExtractor, AVBertForAudioClassification

    folder = tmp_path / "sounds"
    for target, name in ((3, "cow"), (19, "thunderstorm")):
        (folder / name).mkdir(parents=True)
        for clip in sorted(ESC50.glob(f"*-{target}.flac"))[:3]:
            (folder / name / clip.name).symlink_to(clip)
    audio_model = tmp_path / "model"
    AVBertForAudioClassification(AVBertConfig(**{**TINY, "num_labels": 2, "num_clips": 2})).save_pretrained(audio_model)
    AVBertFeatureExtractor(num_clips=2, feature_size=16, num_time_frames=16).save_pretrained(audio_model)
    out = tmp_path / "run"
    source = ["--recipe", "esc50", "--dataset_name", "audiofolder", "--data_dir", str(folder)]
    train.run([*source, "--model", str(audio_model), "--output_dir", str(out), "--max_steps", "1", *TRAIN_FLAGS])
    metrics = evaluate.run([*source, "--model", str(out), "--output-dir", str(tmp_path / "eval"), "--device", "cpu"])
    assert metrics["class_names"] == ["cow", "thunderstorm"] and metrics["num_videos"] == 2  # one held out per class
    assert metrics["num_skipped"] == 0
