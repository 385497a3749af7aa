"""`avbert-pretrain` end to end on real videos with sound from the shared data (skipped when it is absent)."""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from avbert.data.transform import MediaTransform
from avbert.modeling_avbert import AVBertForAudioClassification, AVBertForVideoClassification
from avbert.processing_avbert import AVBertProcessor
from avbert.training.pretrain import PretrainArguments, run

VIDEOS = Path(os.environ.get("AVBERT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")) / "data" / "videos"
WITH_SOUND = (
    "kinetics400/R6llTwEh07w.mp4",
    "kinetics400/flipping_a_pancake.mkv",
    "ucf101/v_ApplyEyeMakeup_g01_c01.avi",
)
WITHOUT_SOUND = "hmdb51/TrumanShow_wave_f_nm_np1_fr_med_26.avi"
TINY = {
    "visual_base_width": 4,
    "visual_depths": [1, 1, 1, 1],
    "audio_base_width": 4,
    "audio_depths": [1, 1, 1, 1],
    "hidden_size": 32,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "orthogonal_size": 8,
    "num_negatives": 4,
    "num_frames": 4,
}

pytestmark = pytest.mark.skipif(
    not all((VIDEOS / name).is_file() for name in (*WITH_SOUND, WITHOUT_SOUND)), reason=f"no shared videos in {VIDEOS}"
)


def _video_dir(root: Path, names: tuple[str, ...]) -> Path:
    folder = root / "videos"
    for name in names:
        (folder / Path(name).parent).mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(VIDEOS / name)
    return folder


def _args(data_dir: Path, output_dir: Path, num_clips: int, batch_size: int, epochs: int) -> list[str]:
    return [
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(output_dir),
        "--config-overrides",
        json.dumps(TINY),
        "--num_clips",
        str(num_clips),
        "--short_side",
        "32",
        "--crop_size",
        "32",
        "--num_train_epochs",
        str(epochs),
        "--per_device_train_batch_size",
        str(batch_size),
        "--logging_steps",
        "1",
        "--use_cpu",
        "--report_to",
        "none",
        "--seed",
        "0",
    ]


def _log_history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def test_pretrain_saves_a_model_the_classifiers_start_from(tmp_path):
    # Four files in batches of two: the one without a sound track is skipped, never a whole batch.
    data_dir = _video_dir(tmp_path, (*WITH_SOUND, WITHOUT_SOUND))
    out = tmp_path / "out"
    metrics = run(_args(data_dir, out, num_clips=6, batch_size=2, epochs=2))

    assert math.isfinite(metrics["train_loss"])
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]  # one per epoch
    steps = [entry for entry in _log_history(out) if "loss" in entry]
    assert len(steps) == 4
    for entry in steps:  # the objectives are logged beside the total
        for key in ("loss", "visual_mep_loss", "audio_mep_loss", "multimodal_mep_loss", "pair_loss"):
            assert math.isfinite(entry[key]), (key, entry)

    processor = AVBertProcessor.from_pretrained(out)
    assert processor.video_processor.num_clips == 6 and processor.feature_extractor.num_clips == 6
    # The per-clip jitter is a pretraining-time argument: it must not carry over into fine-tuning with this processor.
    video_processor = processor.video_processor
    assert video_processor.clip_brightness_jitter == video_processor.clip_contrast_jitter == 0
    assert processor.feature_extractor.to_dict().get("clip_gain_jitter_db", 0) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_clips"] == 6 and config["max_position_embeddings"] >= 7

    for model_class in (AVBertForVideoClassification, AVBertForAudioClassification):
        _, info = model_class.from_pretrained(out, output_loading_info=True)
        assert info["missing_keys"], model_class
        assert not [key for key in info["missing_keys"] if key.startswith("avbert.")], (model_class, info)
        assert not info["mismatched_keys"]


def test_the_per_clip_jitter_is_applied_in_training_only(tmp_path):
    out = tmp_path / "out"
    run([*_args(_video_dir(tmp_path, WITH_SOUND[:1]), out, num_clips=3, batch_size=1, epochs=1), "--max_steps", "1"])
    processor = AVBertProcessor.from_pretrained(out)
    row = {"path": [str(VIDEOS / WITH_SOUND[0])], "label": [0]}
    jitter = PretrainArguments(data_dir=str(tmp_path)).augmentation()
    assert jitter == {"clip_brightness_jitter": 0.4, "clip_contrast_jitter": 0.4, "clip_gain_jitter_db": 6.0}

    def decode(train: bool, augmentation: dict | None) -> dict:
        torch.manual_seed(0)  # the processors draw training randomness from the global generator
        return MediaTransform(processor, "audio-visual", train=train, augmentation=augmentation)(row)

    plain, jittered = decode(True, None), decode(True, jitter)
    assert plain["pixel_values"][0].shape == jittered["pixel_values"][0].shape
    assert not torch.allclose(plain["pixel_values"][0], jittered["pixel_values"][0])
    assert not torch.allclose(plain["input_features"][0], jittered["input_features"][0])
    evaluation = decode(False, None)
    for key in ("pixel_values", "input_features"):
        assert torch.equal(decode(False, jitter)[key][0], evaluation[key][0])


def test_pretrain_resumes_from_the_last_checkpoint(tmp_path):
    data_dir = _video_dir(tmp_path, WITH_SOUND)
    out = tmp_path / "out"
    run(_args(data_dir, out, num_clips=4, batch_size=3, epochs=1))
    assert (out / "checkpoint-1").is_dir()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1

    run([*_args(data_dir, out, num_clips=4, batch_size=3, epochs=2), "--resume_from_checkpoint", "true"])
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert (out / "checkpoint-2").is_dir()
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2]  # continued, not restarted
