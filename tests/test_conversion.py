"""Parity of converted original checkpoints with the outputs recorded by the original code (../shared/fixtures)."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForAudioClassification, AutoModelForVideoClassification

import avbert  # noqa: F401  (registers the Auto classes)
from avbert.convert_original_checkpoint import ConversionError, build_config, convert_checkpoint, main

SHARED = Path(os.environ.get("AVBERT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "fixtures" / "original"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"parity fixtures not found at {FIXTURES}")


def tolerances(fixture: str) -> dict[str, float]:
    manifest = json.loads((FIXTURES / "MANIFEST.json").read_text())
    return {name: entry["recommended_atol"] for name, entry in manifest["fixtures"][fixture]["tolerances"].items()}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    difference = (actual.float() - expected.float()).abs().max().item()
    assert difference <= atol, f"{name}: max abs difference {difference:.3g} > tolerance {atol:.3g}"


def convert(fixture: str, checkpoint: str, task: str, output_dir: Path | None = None):
    return convert_checkpoint(
        FIXTURES / fixture / checkpoint, output_dir, task, original_config_path=FIXTURES / fixture / "config.yaml"
    )


@pytest.fixture(scope="module")
def ks_tensors():
    folder = FIXTURES / "tiny_ks"
    return load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")


@pytest.mark.parametrize("checkpoint", ["finetuned_checkpoint.pyth", "pretrained_checkpoint.pyth"])
def test_kinetics_sounds_backbone_parity(checkpoint, ks_tensors):
    inputs, expected = ks_tensors
    atol = tolerances("tiny_ks")
    model = convert("tiny_ks", checkpoint, "kinetics-sounds")
    pixel_values, input_features = inputs["visual_seq"], inputs["audio_seq"]
    with torch.no_grad():
        out = model.avbert(pixel_values=pixel_values, input_features=input_features, output_hidden_states=True)
        visual_map = model.avbert.visual_encoder(pixel_values.flatten(0, 1))
        audio_map = model.avbert.audio_encoder(input_features.flatten(0, 1))
        visual_embed = model.avbert.visual_projection(out.visual_features)[:, 1:]
        audio_embed = model.avbert.audio_projection(out.audio_features)[:, 1:]
    actual = {
        "visual_feature_map": visual_map,
        "audio_feature_map": audio_map,
        "visual_pooled": out.visual_features.flatten(0, 1),
        "audio_pooled": out.audio_features.flatten(0, 1),
        "visual_embed": visual_embed,
        "audio_embed": audio_embed,
        "single_visual_embeddings_out": out.visual_hidden_states[0],
        "single_audio_embeddings_out": out.audio_hidden_states[0],
        "single_visual_output": out.visual_last_hidden_state,
        "single_audio_output": out.audio_last_hidden_state,
        "multi_embeddings_out": out.hidden_states[0],
        "multi_output": out.last_hidden_state,
    }
    for name, tensor in actual.items():
        assert_close(tensor, expected[name], atol[name], name)


def test_kinetics_sounds_head_parity(ks_tensors):
    inputs, expected = ks_tensors
    atol = tolerances("tiny_ks")
    model = convert("tiny_ks", "finetuned_checkpoint.pyth", "kinetics-sounds")
    with torch.no_grad():
        out = model(pixel_values=inputs["visual_seq"], input_features=inputs["audio_seq"])
    clip_logits, sequence_logits = out.clip_logits.flatten(0, 1), out.sequence_logits.flatten(0, 1)
    assert_close(clip_logits, expected["clip_logits"], atol["clip_logits"], "clip_logits")
    assert_close(sequence_logits, expected["seq_logits"], atol["seq_logits"], "seq_logits")
    assert_close(clip_logits.softmax(-1), expected["clip_probs"], atol["clip_probs"], "clip_probs")
    assert_close(sequence_logits.softmax(-1), expected["seq_probs"], atol["seq_probs"], "seq_probs")
    # The whole-video score is the original's test-time ensemble: the mean of both heads' softmax over clips.
    batch, clips = inputs["visual_seq"].shape[:2]
    original_score = (expected["clip_probs"] + expected["seq_probs"]).view(batch, clips, -1).mean(1) / 2
    assert_close(out.logits.softmax(-1), original_score, atol["seq_probs"], "video score")


def test_pretrained_layout_initializes_heads_as_the_original():
    model = convert("tiny_ks", "pretrained_checkpoint.pyth", "kinetics-sounds")
    for linear in (model.clip_head.classifier, model.sequence_head.classifier, model.sequence_head.visual_dense):
        assert abs(linear.weight.std().item() - 0.01) < 0.002
        if linear.bias is not None:
            assert torch.count_nonzero(linear.bias) == 0


def test_ucf101_parity():
    atol = tolerances("tiny_visual")
    inputs = load_file(FIXTURES / "tiny_visual" / "inputs.safetensors")
    expected = load_file(FIXTURES / "tiny_visual" / "outputs.safetensors")
    model = convert("tiny_visual", "finetuned_checkpoint.pyth", "ucf101")
    clips = inputs["visual_clip"]
    with torch.no_grad():
        out = model(pixel_values=clips.unsqueeze(1))  # each clip as a one-clip video
        feature_map = model.avbert.visual_encoder(clips)
        large_map = model.avbert.visual_encoder(inputs["extra_large_visual_clip"])
    assert_close(feature_map, expected["feature_map"], atol["feature_map"], "feature_map")
    assert_close(out.clip_logits[:, 0], expected["logits"], atol["logits"], "logits")
    assert_close(out.logits.softmax(-1), expected["probs"], atol["probs"], "probs")
    # Inputs larger than the training crop: the CNN agrees; the head pools globally (documented deviation).
    assert_close(large_map, expected["extra_large_feature_map"], atol["extra_large_feature_map"], "large map")


def test_esc50_linear_eval_parity():
    atol = tolerances("tiny_audio")
    inputs = load_file(FIXTURES / "tiny_audio" / "inputs.safetensors")
    expected = load_file(FIXTURES / "tiny_audio" / "outputs.safetensors")
    model = convert("tiny_audio", "finetuned_checkpoint.pyth", "esc50")
    assert model.config.freeze_encoder and model.config.classifier_loss == "multi_margin"
    clips = inputs["audio_clip"]
    with torch.no_grad():
        out = model(input_features=clips.unsqueeze(1))
        feature_map = model.avbert.audio_encoder(clips)
    assert_close(feature_map, expected["feature_map"], atol["feature_map"], "feature_map")
    assert_close(out.clip_logits[:, 0], expected["logits"], atol["logits"], "logits")
    assert_close(out.logits.softmax(-1), expected["probs"], atol["probs"], "probs")


def test_converted_folder_loads_with_auto_classes(tmp_path, ks_tensors):
    inputs, _ = ks_tensors
    model = convert("tiny_ks", "finetuned_checkpoint.pyth", "kinetics-sounds", tmp_path / "ks")
    reloaded, info = AutoModelForVideoClassification.from_pretrained(tmp_path / "ks", output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        expected = model(pixel_values=inputs["visual_seq"], input_features=inputs["audio_seq"]).logits
        actual = reloaded.eval()(pixel_values=inputs["visual_seq"], input_features=inputs["audio_seq"]).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)

    convert("tiny_audio", "finetuned_checkpoint.pyth", "esc50", tmp_path / "esc50")
    audio_model = AutoModelForAudioClassification.from_pretrained(tmp_path / "esc50")
    assert type(audio_model).__name__ == "AVBertForAudioClassification"


def test_cli_writes_a_folder(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class_{i}" for i in range(5)))
    output = tmp_path / "converted"
    main(
        [
            str(FIXTURES / "tiny_visual" / "finetuned_checkpoint.pyth"),
            str(output),
            "--task",
            "ucf101",
            "--original-config",
            str(FIXTURES / "tiny_visual" / "config.yaml"),
            "--labels",
            str(labels),
        ]
    )
    assert (output / "model.safetensors").is_file() and (output / "config.json").is_file()
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"]["4"] == "class_4" and config["use_audio"] is False


def test_original_config_mapping():
    config = build_config("kinetics-sounds", FIXTURES / "tiny_ks" / "config.yaml")
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (64, 4, 128)
    assert (config.num_hidden_layers, config.orthogonal_size, config.max_position_embeddings) == (2, 16, 8)
    assert (config.visual_base_width, config.audio_base_width, config.num_frames, config.num_clips) == (8, 8, 8, 3)
    assert config.num_labels == 5 and config.fusion == "mid" and config.classifier_dropout == 0.5
    with pytest.raises(ConversionError, match="does not match --task"):
        build_config("ucf101", FIXTURES / "tiny_ks" / "config.yaml")


def _save_modified(tmp_path: Path, edit) -> Path:
    checkpoint = torch.load(FIXTURES / "tiny_ks" / "finetuned_checkpoint.pyth", map_location="cpu", weights_only=True)
    edit(checkpoint["model_state_dict"])
    path = tmp_path / "modified.pyth"
    torch.save(checkpoint, path)
    return path


def test_unknown_keys_are_refused(tmp_path):
    path = _save_modified(tmp_path, lambda sd: sd.__setitem__("avbert.mystery_module.weight", torch.zeros(3)))
    with pytest.raises(ConversionError, match=r"not understood[\s\S]*avbert\.mystery_module\.weight"):
        convert_checkpoint(path, None, "kinetics-sounds", FIXTURES / "tiny_ks" / "config.yaml")


def test_wrong_generator_layout_fails_the_self_check(tmp_path):
    def transpose_generators(state_dict):
        for key in state_dict:
            if key.endswith("orthogonal_ms0_linear.A"):
                state_dict[key] = state_dict[key].T.contiguous()

    path = _save_modified(tmp_path, transpose_generators)
    with pytest.raises(ConversionError, match="cached `_B`"):
        convert_checkpoint(path, None, "kinetics-sounds", FIXTURES / "tiny_ks" / "config.yaml")


def test_bad_files_are_refused(tmp_path):
    not_a_checkpoint = tmp_path / "notes.pyth"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(ConversionError, match=r"notes\.pyth: not a PyTorch checkpoint \(neither the zip archive"):
        convert_checkpoint(not_a_checkpoint, None, "ucf101")
    wrong_layout = tmp_path / "weights.pyth"
    torch.save({"weights": {}}, wrong_layout)
    with pytest.raises(ConversionError, match="expected the key 'state_dict'"):
        convert_checkpoint(wrong_layout, None, "ucf101")
    with pytest.raises(ConversionError, match="does not have"):  # an audio checkpoint converted as UCF101
        convert_checkpoint(FIXTURES / "tiny_audio" / "finetuned_checkpoint.pyth", None, "ucf101")


# The released repository's configs/*/config.yaml hold only what differs from the yacs defaults, and YAML 1.1 reads
# `1e-5` as a string. This is the tiny_ks fixture's configuration written that way (the fixture's own file is a full
# cfg.dump(), with every value typed).
SHIPPED_STYLE_KS_YAML = """
MODEL:
  TASK: MultimodalSequenceClassify
  NUM_CLASSES: 5
  EPSILON: 1e-5
  DOWNSTREAM_FUSION: concat
  POOLING: True
TRAIN:
  BATCH_SIZE: 5
DATA:
  NUM_FRAMES: 8
  CROP_SIZE: 32
  TRAIN_CROP_SIZE: 32
  TEST_CROP_SIZE: 32
  SEQUENCE_LENGTH: 3
RESNET:
  WIDTH_PER_GROUP: 8
AUDIO_RESNET:
  WIDTH_PER_GROUP: 8
TRANSFORMER:
  HIDDEN_SIZE: 64
  NUM_ATTENTION_HEADS: 4
  INTERMEDIATE_SIZE: 128
  NUM_HIDDEN_LAYERS: 2
  ORTHOGONAL_SIZE: 16
  MAX_POSITION_EMBEDDINGS: 8
NUM_GPUS: 1
"""


def test_shipped_style_yaml_converts_like_the_full_dump(tmp_path):
    shipped = tmp_path / "config.yaml"
    shipped.write_text(SHIPPED_STYLE_KS_YAML)
    assert isinstance(__import__("yaml").safe_load(SHIPPED_STYLE_KS_YAML)["MODEL"]["EPSILON"], str)  # YAML 1.1
    from_shipped = build_config("kinetics-sounds", shipped)  # crashed: a validation traceback on "1e-5"
    from_dump = build_config("kinetics-sounds", FIXTURES / "tiny_ks" / "config.yaml")
    assert from_shipped.to_dict() == from_dump.to_dict() and from_shipped.batch_norm_eps == 1e-5

    convert_checkpoint(FIXTURES / "tiny_ks" / "finetuned_checkpoint.pyth", tmp_path / "out", "kinetics-sounds", shipped)
    processor = json.loads((tmp_path / "out" / "processor_config.json").read_text())["video_processor"]
    # TEST_CROP_SIZE was ignored (128 crops for a model tested on 32), frame counts and train crops come along
    assert processor["crop_size"] == {"height": 32, "width": 32} and processor["size"] == {"shortest_edge": 32}
    assert (processor["num_frames"], processor["num_clips"], processor["train_crop_size"]) == (8, 3, 32)


def test_a_corrupted_checkpoint_is_refused(tmp_path):
    import zipfile

    source = FIXTURES / "tiny_visual" / "finetuned_checkpoint.pyth"
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)  # the largest tensor
    start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
    for offset in range(start + 16, start + 16 + 64, 8):
        data[offset] ^= 0x5A
    corrupted = tmp_path / "corrupted.pyth"
    corrupted.write_bytes(bytes(data))
    with pytest.raises(ConversionError, match="corrupted checkpoint"):  # converted without complaint before
        convert_checkpoint(corrupted, None, "ucf101")


@pytest.mark.parametrize(
    ("content", "message"),
    [("MODEL: [unclosed\n", "not valid YAML"), ("just a string\n", "expected a mapping"), (None, "cannot read")],
)
def test_bad_yaml_gives_one_error_line(tmp_path, capsys, content, message):
    config = tmp_path / "config.yaml"
    if content is not None:
        config.write_text(content)
    checkpoint = str(FIXTURES / "tiny_visual" / "finetuned_checkpoint.pyth")
    with pytest.raises(SystemExit) as exit_info:
        main([checkpoint, str(tmp_path / "out"), "--task", "ucf101", "--original-config", str(config)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("avbert-convert: error:") and message in error and "\n" not in error


def test_a_wrong_task_is_named(tmp_path):
    with pytest.raises(ConversionError, match="looks like a checkpoint of the esc50 task: pass --task esc50"):
        convert_checkpoint(FIXTURES / "tiny_audio" / "finetuned_checkpoint.pyth", None, "ucf101")
    with pytest.raises(ConversionError, match="pass --task kinetics-sounds"):
        convert_checkpoint(FIXTURES / "tiny_ks" / "finetuned_checkpoint.pyth", None, "ucf101")
