"""Evaluation tools of `avbert.training`: the local top-k metric, the synthetic dataset and multi-view evaluation.

Everything runs offline on tiny inputs: a tiny random AVBERT, a dozen 1-second synthetic videos and one corrupt file.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import avbert.training
from avbert import (
    AVBertConfig,
    AVBertFeatureExtractor,
    AVBertForVideoClassification,
    AVBertProcessor,
    AVBertVideoProcessor,
)
from avbert.data.folders import load_media_dataset
from avbert.data.synthetic import make_synthetic_av_dataset, synthetic_classes
from avbert.media_decoding import probe, read_audio, read_frames
from avbert.training.evaluate import (
    decode_views,
    evaluate_model,
    evenly_spaced_subset,
    load_model_and_processor,
    main,
    per_class_accuracy,
    run,
)

METRIC_PATH = Path(avbert.training.__file__).parent / "metrics" / "top_k_accuracy"
NUM_CLIPS = 3
NUM_FRAMES = 8
VIDEOS_PER_CLASS = 3  # 2 train + 1 test per class with test_fraction=0.25
SYNTHETIC = {"videos_per_class": VIDEOS_PER_CLASS, "duration": 1.0, "size": 48, "fps": 15, "seed": 3}


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_av_dataset(tmp_path_factory.mktemp("synthetic"), **SYNTHETIC)


@pytest.fixture(scope="module")
def data_with_corrupt_file(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test split plus one file that is not a media file at all."""
    root = tmp_path_factory.mktemp("with_corrupt")
    for source in (synthetic_dir / "test").rglob("*.mp4"):
        target = root / "test" / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    first_class = sorted(p.name for p in (root / "test").iterdir())[0]
    (root / "test" / first_class / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 8)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random audio-visual AVBERT and its processor (3 clips of 8 frames), saved like a fine-tuned model."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = AVBertConfig(
        visual_base_width=4,
        audio_base_width=4,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_hidden_layers=2,
        orthogonal_size=8,
        max_position_embeddings=12,
        num_clips=NUM_CLIPS,
        num_frames=NUM_FRAMES,
        num_labels=4,
        initializer_range=0.5,  # non-uniform scores, so averaging and argmax are actually exercised
    )
    AVBertForVideoClassification(config).eval().save_pretrained(folder)
    processor = AVBertProcessor(
        feature_extractor=AVBertFeatureExtractor(num_clips=NUM_CLIPS),
        video_processor=AVBertVideoProcessor(num_clips=NUM_CLIPS, num_frames=NUM_FRAMES, load_audio_in_video=True),
    )
    processor.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# The top-k metric module


def test_top_k_metric_loads_offline_from_its_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    import evaluate

    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    metric = evaluate.load(str(METRIC_PATH))
    scores = [
        [0.1, 0.5, 0.2, 0.0, 0.1, 0.1],  # label 1: top-1
        [0.3, 0.1, 0.25, 0.2, 0.1, 0.05],  # label 2: 2nd -> top-5 only
        [0.9, 0.02, 0.02, 0.02, 0.02, 0.02],  # label 5: ranked 2nd..6th by a tie, stable order puts it 6th
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.0],  # label 0: tied last with label 5, sorted before it -> 5th
    ]
    labels = [1, 2, 5, 0]
    assert metric.compute(predictions=scores, references=labels) == {"top1_accuracy": 0.25, "top5_accuracy": 0.75}
    result = metric.compute(predictions=scores, references=labels, k=(2, 10))
    assert result == {"top2_accuracy": 0.5, "top10_accuracy": 1.0}  # k > C counts as C
    assert metric.compute(predictions=scores, references=labels, k=1) == {"top1_accuracy": 0.25}


def test_top_k_metric_rejects_bad_inputs() -> None:
    import evaluate

    metric = evaluate.load(str(METRIC_PATH))
    with pytest.raises(ValueError, match="references must lie"):
        metric.compute(predictions=[[0.1, 0.9]], references=[2])
    with pytest.raises(ValueError, match="k must be"):
        metric.compute(predictions=[[0.1, 0.9]], references=[1], k=0)


# ---------------------------------------------------------------------------------------------------------------------
# The synthetic dataset


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    info = probe(path)
    return read_frames(path, np.arange(info.video.num_frames)), *read_audio(path)


def _colour_statistic(frames: np.ndarray) -> float:
    """Share of clearly red pixels minus share of clearly blue ones (the visual factor of the 4 classes)."""
    pixels = frames.astype(np.int32)
    red = (pixels[..., 0] - pixels[..., 2]) > 80
    blue = (pixels[..., 2] - pixels[..., 0]) > 80
    return float(red.mean() - blue.mean())


def _dominant_frequency(waveform: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform.mean(axis=0)))
    return float(np.fft.rfftfreq(waveform.shape[1], 1 / sample_rate)[spectrum.argmax()])


def test_synthetic_layout_and_split(synthetic_dir: Path) -> None:
    names = sorted(item.name for item in synthetic_classes(4))
    train = load_media_dataset("folder", synthetic_dir, "train")
    test = load_media_dataset("folder", synthetic_dir, "test")
    assert train.features["label"].names == test.features["label"].names == names
    assert (len(train), len(test)) == (4 * 2, 4 * 1)
    assert not set(train["path"]) & set(test["path"])


def test_synthetic_files_decode_with_audio_and_are_deterministic(synthetic_dir: Path, tmp_path: Path) -> None:
    files = sorted(synthetic_dir.rglob("*.mp4"))
    assert len(files) == 4 * VIDEOS_PER_CLASS
    for path in files:
        info = probe(path)
        assert info.video is not None and info.audio is not None
        assert (info.video.width, info.video.height, info.video.num_frames) == (48, 48, 15)
        assert info.audio.duration == pytest.approx(1.0, abs=0.1)
    again = make_synthetic_av_dataset(tmp_path, num_classes=2, **SYNTHETIC)
    first = sorted(again.rglob("*.mp4"))[0]
    original = synthetic_dir / first.relative_to(again)
    for mine, theirs in zip(_decode(first)[:2], _decode(original)[:2], strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_synthetic_classes_are_separable_per_modality_only(synthetic_dir: Path) -> None:
    """The picture decides the colour factor and the sound the tone factor, each perfectly, on the decoded files."""
    by_class = {item.name: item for item in synthetic_classes(4)}
    for path in sorted(synthetic_dir.rglob("*.mp4")):
        item = by_class[path.parent.name]
        frames, waveform, rate = _decode(path)
        colour = _colour_statistic(frames)
        assert (colour > 0.02) if item.colour == "red" else (colour < -0.02), (path.name, colour)
        frequency = _dominant_frequency(waveform, rate)
        assert frequency == pytest.approx(item.tone_hz, rel=0.04), (path.name, frequency)


def test_synthetic_object_survives_every_crop(synthetic_dir: Path) -> None:
    """The object lies inside [0.3, 0.7] of the frame, which every evaluation and training crop keeps."""
    path = sorted(synthetic_dir.rglob("*.mp4"))[0]
    frames, _, _ = _decode(path)
    pixels = frames.astype(np.int32)
    coloured = np.abs(pixels[..., 0] - pixels[..., 2]) > 80
    ys, xs = np.nonzero(coloured.any(axis=0))
    side = frames.shape[1]
    assert ys.min() >= 0.2 * side and ys.max() <= 0.8 * side
    assert xs.min() >= 0.2 * side and xs.max() <= 0.8 * side


# ---------------------------------------------------------------------------------------------------------------------
# Multi-view evaluation


def test_multi_view_scores_equal_hand_computation(model_dir: Path, synthetic_dir: Path) -> None:
    model, processor = load_model_and_processor(model_dir, "audio-visual")
    dataset = load_media_dataset("folder", synthetic_dir, "test")
    result = evaluate_model(model, processor, dataset, batch_size=3)
    assert result["num_videos"] == len(dataset) and result["skipped_files"] == []

    path = dataset[1]["path"]
    views = decode_views(processor, path, "audio-visual")
    assert views["pixel_values"].shape[:2] == (3, NUM_CLIPS)  # 3 spatial crops x clips
    assert views["input_features"].shape[:2] == (3, NUM_CLIPS)
    by_hand = torch.zeros(4)
    with torch.no_grad():
        for crop in range(3):  # one crop row at a time, averaged by hand
            logits = model(
                pixel_values=views["pixel_values"][crop : crop + 1],
                input_features=views["input_features"][crop : crop + 1],
            ).logits
            by_hand += logits.softmax(-1)[0] / 3
    row = result["paths"].index(path)
    np.testing.assert_allclose(result["scores"][row], by_hand.numpy(), rtol=1e-4, atol=1e-6)
    assert result["scores"].sum(axis=1) == pytest.approx(np.ones(len(dataset)), abs=1e-5)


def test_main_writes_outputs_and_lists_the_corrupt_file(
    model_dir: Path, data_with_corrupt_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "eval"
    argv = ["--model", str(model_dir), "--data-dir", str(data_with_corrupt_file), "--recipe", "kinetics-sounds"]
    metrics = run([*argv, "--output-dir", str(out), "--batch-size", "2", "--device", "cpu"])

    written = json.loads((out / "metrics.json").read_text())
    assert written["num_videos"] == 4 and written["num_skipped"] == 1
    assert Path(written["skipped_files"][0]["path"]).name == "broken.mp4"
    assert written["skipped_files"][0]["reason"]
    assert "broken.mp4" in caplog.text  # reported, not silently dropped
    assert 0.0 <= written["top1_accuracy"] <= written["top5_accuracy"] == 1.0  # 4 classes: top-5 is everything
    assert set(written["per_class_accuracy"]) == {item.name for item in synthetic_classes(4)}
    assert written["clips_per_view"] == NUM_CLIPS and written["spatial_views"] == 3
    assert metrics["top1_accuracy"] == written["top1_accuracy"]

    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and all(Path(row["path"]).parent.name == row["label_name"] for row in rows)
    assert sum(row["correct"] == "True" for row in rows) / 4 == pytest.approx(written["top1_accuracy"])
    assert (out / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")


def test_max_samples_spreads_over_the_dataset() -> None:
    assert evenly_spaced_subset(10, None) == list(range(10))
    assert evenly_spaced_subset(10, 3) == [0, 4, 9] or evenly_spaced_subset(10, 3) == [0, 5, 9]
    assert evenly_spaced_subset(3, 5) == [0, 1, 2]


def test_per_class_accuracy_marks_unseen_classes() -> None:
    labels, predictions = np.array([0, 0, 2]), np.array([0, 1, 2])
    assert per_class_accuracy(labels, predictions, ["a", "b", "c"]) == {"a": 0.5, "b": None, "c": 1.0}


def test_cli_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--model", "--data-dir", "--recipe", "--layout", "--split-id", "--output-dir", "--max-samples"):
        assert option in help_text


def test_installed_cli_with_bf16_matches_the_fp32_top1(model_dir: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    """`avbert-evaluate --bf16` as installed (a real subprocess): exit 0, the weights loaded in bfloat16, and the same
    top-1 accuracy and per-file predictions as the fp32 run."""
    import shutil
    import subprocess
    import sys

    script = shutil.which("avbert-evaluate", path=str(Path(sys.executable).parent))
    assert script is not None, "the avbert-evaluate console script is not installed next to this interpreter"
    outputs = {}
    for name, flags in (("fp32", []), ("bf16", ["--bf16"])):
        out = tmp_path / name
        argv = ["--model", str(model_dir), "--data-dir", str(synthetic_dir), "--recipe", "kinetics-sounds"]
        completed = subprocess.run(
            [script, *argv, "--output-dir", str(out), "--device", "cpu", *flags],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert completed.returncode == 0, completed.stderr[-2000:]
        with (out / "predictions.csv").open() as handle:
            predictions = {row["path"]: row["prediction"] for row in csv.DictReader(handle)}
        outputs[name] = (json.loads((out / "metrics.json").read_text()), predictions)
    (fp32, fp32_predictions), (bf16, bf16_predictions) = outputs["fp32"], outputs["bf16"]
    assert fp32["dtype"] == "float32" and bf16["dtype"] == "bfloat16"
    assert bf16["num_videos"] == fp32["num_videos"] == 4
    assert bf16["top1_accuracy"] == fp32["top1_accuracy"]
    assert bf16_predictions == fp32_predictions
