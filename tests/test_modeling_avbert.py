"""
Model tests for AVBERT in the spirit of transformers' common model tests (`tests/test_modeling_common.py`), on tiny
configurations (see `conftest.py`): configuration, save/load, Auto classes and remote code, initialization,
determinism and batching, outputs, attention backends, training, every configuration option, input validation,
linear evaluation, low precision, torch.compile, the orthogonal-matrix cache and the full-size parameter counts.
"""

import copy
import inspect
import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import BATCH_SIZE, NO_DROPOUT, NUM_CLIPS, NUM_LABELS
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForAudioClassification, AutoModelForVideoClassification
from transformers.utils import logging as hf_logging

from avbert import (
    AVBertClassifierOutput,
    AVBertConfig,
    AVBertForAudioClassification,
    AVBertForVideoClassification,
    AVBertModel,
    AVBertModelOutput,
)
from avbert.modeling_avbert import AVBertBottleneck, AVBertOrthogonal

MODEL_CLASSES = (AVBertModel, AVBertForVideoClassification, AVBertForAudioClassification)
AUDIO_ONLY = {"use_visual": False, "use_transformer": False}  # the ESC-50 audio classifier


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # The models are tiny: intra-op threads only cost time, and with another process competing for the cores
    # OpenMP spin-waiting makes a tiny forward up to 100x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def labels():
    return torch.tensor([1, 3])


def build(model_class, config, seed=0, **from_config_kwargs):
    torch.manual_seed(seed)
    if from_config_kwargs:
        return model_class._from_config(config, **from_config_kwargs)
    return model_class(config)


def model_inputs(model, make_inputs, **kwargs):
    """Inputs for the modalities `model` has."""
    config = model.config
    video = config.use_visual and not isinstance(model, AVBertForAudioClassification)
    return make_inputs(video=video, audio=config.use_audio, **kwargs)


def assert_same_state(model_a, model_b):
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, tensor in state_a.items():
        assert torch.equal(tensor, state_b[name]), name


def orthogonal_modules(model):
    return [(name, module) for name, module in model.named_modules() if isinstance(module, AVBertOrthogonal)]


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------

INVALID_CONFIGS = {
    "no_modality": ({"use_visual": False, "use_audio": False}, "at least one modality"),
    "bad_fusion": ({"fusion": "middle"}, r"fusion must be one of .*'middle'"),
    "heads_not_dividing_hidden": ({"num_attention_heads": 5}, r"hidden_size \(32\) must be divisible by .*\(5\)"),
    "too_many_clips_for_positions": ({"num_clips": 8}, r"num_clips=8 needs 9 positions .* max_position_embeddings"),
    "no_clips": ({"num_clips": 0}, "num_clips must be positive"),
    "bad_orthogonal_map": ({"orthogonal_map": "householder"}, r"orthogonal_map must be one of .*'householder'"),
    "bad_orthogonal_init": ({"orthogonal_init": "xavier"}, r"orthogonal_init must be one of .*'xavier'"),
    "bad_classifier_loss": ({"classifier_loss": "hinge"}, r"classifier_loss must be one of .*'hinge'"),
    "late_fusion_visual_only": (
        {"fusion": "late", "use_audio": False},
        "fusion='late' .* needs use_visual and use_audio",
    ),
    "early_fusion_audio_only": ({"fusion": "early", "use_visual": False}, "fusion='early' .* use_visual and use_audio"),
    "stage_count_mismatch": ({"visual_temporal_kernel_sizes": [1]}, "one entry per stage"),
    "even_temporal_kernel": ({"visual_temporal_kernel_sizes": [1, 2]}, "must be odd"),
    "too_many_separable_stages": ({"audio_num_separable_stages": 3}, r"audio_num_separable_stages must be in \[0, 2\]"),
    "no_rank": ({"orthogonal_size": 0}, "orthogonal_size must be positive"),
    "no_width": ({"visual_base_width": 0}, "depths and widths must be positive"),
}


@pytest.mark.parametrize("overrides, message", INVALID_CONFIGS.values(), ids=INVALID_CONFIGS.keys())
def test_config_rejects_invalid_combination(make_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


def test_config_validation_errors_are_value_errors(make_config):
    with pytest.raises(ValueError, match="fusion must be one of"):
        make_config(fusion="middle")


def test_config_keeps_undeclared_keys_with_a_warning(caplog):
    # As every transformers config: tools, PEFT and users add attributes, and save_pretrained writes them.
    with caplog.at_level("WARNING", logger="avbert.configuration_avbert"):
        config = AVBertConfig(hiden_size=3, tie_word_embeddings=False)
    assert config.hiden_size == 3 and config.hidden_size == 768
    assert "hiden_size" in caplog.text and "tie_word_embeddings" in caplog.text


def test_saved_folder_with_undeclared_keys_loads(make_config, tmp_path, caplog):
    make_config().save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**saved, "peft_note": "added by a tool"}))
    with caplog.at_level("WARNING", logger="avbert.configuration_avbert"):
        config = AutoConfig.from_pretrained(tmp_path)
    assert config.peft_note == "added by a tool"
    assert "peft_note" in caplog.text
    assert AVBertConfig.from_pretrained(tmp_path).to_dict()["peft_note"] == "added by a tool"


def test_config_rejects_wrong_type(make_config):
    with pytest.raises(StrictDataclassError, match="hidden_size"):
        make_config(hidden_size="32")


def test_config_accepts_boundary_values(make_config):
    config = make_config(num_clips=7)  # num_clips + 1 == max_position_embeddings
    assert config.num_clips == 7
    # Single-modality models without a transformer do not care about the fusion mode.
    assert make_config(fusion="late", use_audio=False, use_transformer=False).transformer_stages == ()


@pytest.mark.parametrize(
    "overrides, stages",
    [
        ({}, ("visual", "audio", "multimodal")),
        ({"fusion": "late"}, ("visual", "audio")),
        ({"fusion": "early"}, ("multimodal",)),
        ({"use_audio": False}, ("visual",)),
        ({"use_visual": False}, ("audio",)),
        ({"use_transformer": False}, ()),
    ],
)
def test_config_transformer_stages(make_config, overrides, stages):
    assert make_config(**overrides).transformer_stages == stages


def test_config_default_feature_sizes():
    config = AVBertConfig()
    assert (config.visual_feature_size, config.audio_feature_size) == (2048, 1024)


def test_config_dict_round_trip(make_config):
    config = make_config(fusion="late", orthogonal_map="cayley", classifier_loss="multi_margin")
    as_dict = config.to_dict()
    assert as_dict["model_type"] == "avbert"
    reloaded = AVBertConfig.from_dict(as_dict)
    assert reloaded.to_dict() == as_dict
    assert AVBertConfig.from_dict(AVBertConfig().to_dict()).to_dict() == AVBertConfig().to_dict()


def without_path(config_dict):
    return {key: value for key, value in config_dict.items() if key != "_name_or_path"}


def test_config_save_pretrained_round_trip(make_config, tmp_path):
    config = make_config(
        sharing_across_layers=False, orthogonal_init="henaff", num_labels=2, id2label={0: "dog", 1: "cat"}
    )
    config.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    assert (tmp_path / "configuration_avbert.py").is_file()  # register_for_auto_class copies the code
    expected = without_path(config.to_dict())
    for loaded in (AVBertConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert isinstance(loaded, AVBertConfig)
        assert without_path(loaded.to_dict()) == expected
        assert loaded.id2label == {0: "dog", 1: "cat"}
    assert without_path(AVBertConfig.from_json_file(tmp_path / "config.json").to_dict()) == expected


def test_config_save_pretrained_revalidates(make_config, tmp_path):
    config = make_config()
    config.fusion = "middle"
    with pytest.raises((ValueError, StrictDataclassError), match="fusion must be one of"):
        config.save_pretrained(tmp_path)


def test_config_labels(make_config):
    config = make_config()
    assert config.num_labels == NUM_LABELS
    assert config.id2label == {i: f"LABEL_{i}" for i in range(NUM_LABELS)}
    assert config.label2id == {f"LABEL_{i}": i for i in range(NUM_LABELS)}
    config.num_labels = 7
    assert len(config.id2label) == 7

    named = AVBertConfig(id2label={0: "dog", 1: "cat", 2: "bird"})
    assert named.num_labels == 3
    assert AVBertConfig().num_labels == 2  # transformers' default


# ----------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def saved_classifier(make_config, make_inputs, tmp_path):
    """An eval-mode AV classifier, its folder and its reference outputs."""
    model = build(AVBertForVideoClassification, make_config()).eval()
    inputs = make_inputs()
    with torch.no_grad():
        expected = model(**inputs)
    folder = tmp_path / "avbert-tiny"
    model.save_pretrained(folder)
    return model, folder, inputs, expected


def test_save_pretrained_writes_safetensors_and_code(saved_classifier):
    _, folder, _, _ = saved_classifier
    files = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_avbert.py", "modeling_avbert.py"} <= files
    assert not any(name.endswith(".bin") for name in files)


def test_save_load_gives_identical_outputs(saved_classifier, tmp_path):
    model, folder, inputs, expected = saved_classifier
    reloaded, info = AVBertForVideoClassification.from_pretrained(folder, output_loading_info=True)
    assert {key: set(value) for key, value in info.items()} == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
        "error_msgs": set(),
    }
    assert not reloaded.training
    assert_same_state(model, reloaded)
    # Twice, as in test_save_load: the reloaded model saves and reloads to the same outputs.
    reloaded.save_pretrained(tmp_path / "again")
    twice = AVBertForVideoClassification.from_pretrained(tmp_path / "again")
    for candidate in (reloaded, twice):
        with torch.no_grad():
            output = candidate(**inputs)
        for name in ("logits", "clip_logits", "sequence_logits"):
            assert torch.equal(output[name], expected[name]), name


def test_reload_restores_orthogonal_buffers_and_generators(saved_classifier):
    model, folder, _, _ = saved_classifier
    with torch.no_grad():  # make the reloaded generators differ from a fresh init
        for _, module in orthogonal_modules(model):
            module.generator.add_(torch.randn_like(module.generator))
    model.save_pretrained(folder)
    torch.manual_seed(123)  # a different seed: anything re-initialized instead of loaded would differ
    reloaded = AVBertForVideoClassification.from_pretrained(folder)
    reloaded_modules = dict(orthogonal_modules(reloaded))
    assert len(reloaded_modules) == 6 * 3  # six projections x three modality groups, one shared layer
    for name, module in orthogonal_modules(model):
        assert torch.equal(reloaded_modules[name].base, torch.eye(module.base.shape[0])), name
        assert torch.equal(reloaded_modules[name].generator, module.generator), name
        with torch.no_grad():
            torch.testing.assert_close(reloaded_modules[name](), module(), rtol=0, atol=0)


def test_auto_classes_load_saved_folders(saved_classifier, make_config, make_inputs, tmp_path):
    _, folder, inputs, expected = saved_classifier
    assert isinstance(AutoConfig.from_pretrained(folder), AVBertConfig)

    classifier = AutoModelForVideoClassification.from_pretrained(folder)
    assert type(classifier) is AVBertForVideoClassification
    with torch.no_grad():
        assert torch.equal(classifier(**inputs).logits, expected.logits)

    backbone, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert type(backbone) is AVBertModel
    # The classifier's heads are not the backbone's: left out without a load report (_keys_to_ignore_on_load_unexpected)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, classifier.avbert.state_dict()[name]), name

    audio_model = build(AVBertForAudioClassification, make_config(**AUDIO_ONLY)).eval()
    audio_folder = tmp_path / "audio"
    audio_model.save_pretrained(audio_folder)
    loaded_audio, info = AutoModelForAudioClassification.from_pretrained(audio_folder, output_loading_info=True)
    assert type(loaded_audio) is AVBertForAudioClassification
    assert not info["missing_keys"] and not info["unexpected_keys"]
    audio_inputs = make_inputs(video=False)
    with torch.no_grad():
        assert torch.equal(loaded_audio(**audio_inputs).logits, audio_model(**audio_inputs).logits)


def test_backbone_loads_from_classifier_folder(saved_classifier):
    model, folder, inputs, _ = saved_classifier
    backbone, info = AVBertModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert_same_state(model.avbert, backbone)
    with torch.no_grad():
        expected = model.avbert(**inputs).last_hidden_state
        assert torch.equal(backbone(**inputs).last_hidden_state, expected)


def test_load_with_new_label_count(saved_classifier):
    model, folder, inputs, _ = saved_classifier
    reloaded = AVBertForVideoClassification.from_pretrained(folder, num_labels=7, ignore_mismatched_sizes=True)
    assert reloaded.config.num_labels == 7
    assert_same_state(model.avbert, reloaded.avbert)
    with torch.no_grad():
        assert reloaded(**inputs).logits.shape == (BATCH_SIZE, 7)


def test_from_pretrained_with_state_dict_and_no_folder(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config()).eval()
    rebuilt, info = AVBertForVideoClassification.from_pretrained(
        None, config=model.config, state_dict=model.state_dict(), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    inputs = make_inputs()
    with torch.no_grad():
        assert torch.equal(rebuilt(**inputs).logits, model(**inputs).logits)


REMOTE_CODE_SCRIPT = r"""
import sys

sys.modules["avbert"] = None  # only the code saved in the folder may be used
try:
    import avbert  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the avbert package is importable in the subprocess")

import torch
from transformers import AutoModelForVideoClassification

torch.set_num_threads(1)
folder, data = sys.argv[1], sys.argv[2]
model = AutoModelForVideoClassification.from_pretrained(folder, trust_remote_code=True).eval()
module = type(model).__module__
assert module.startswith("transformers_modules.") and type(model).__name__ == "AVBertForVideoClassification", module
saved = torch.load(data)
with torch.no_grad():
    logits = model(pixel_values=saved["pixel_values"], input_features=saved["input_features"]).logits
torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-6)
# The folder's auto_map lists AutoModel too: the backbone loads from the classifier's folder.
from transformers import AutoModel

backbone = AutoModel.from_pretrained(folder, trust_remote_code=True)
assert type(backbone).__name__ == "AVBertModel" and type(backbone).__module__.startswith("transformers_modules.")
print("REMOTE_CODE_OK", module)
"""


def test_remote_code_loads_without_the_package(saved_classifier, tmp_path):
    _, folder, inputs, expected = saved_classifier
    data = tmp_path / "expected.pt"
    torch.save({**inputs, "logits": expected.logits}, data)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    # -I: isolated mode, so neither the working directory nor PYTHONPATH is on sys.path; the editable install's
    # import hook still is, hence the sys.modules block in the script (which also checks that it works).
    result = subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_CODE_SCRIPT, str(folder), str(data)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REMOTE_CODE_OK transformers_modules." in result.stdout


@pytest.mark.parametrize("model_class", MODEL_CLASSES[:2])
def test_auto_map_lists_auto_model_and_the_head(make_config, tmp_path, model_class):
    build(model_class, make_config()).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_avbert.AVBertConfig"
    assert auto_map["AutoModel"] == "modeling_avbert.AVBertModel"
    if model_class is AVBertForVideoClassification:
        assert auto_map["AutoModelForVideoClassification"] == "modeling_avbert.AVBertForVideoClassification"


def test_loading_a_saved_folder_is_as_quiet_as_a_stock_family(saved_classifier, capfd):
    """Loading a folder into its own class prints what VideoMAE's does: transformers' progress bar, no report."""
    _, folder, _, _ = saved_classifier
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AutoModelForVideoClassification.from_pretrained(folder)
        AutoConfig.from_pretrained(folder)
    captured = capfd.readouterr()
    lines = [line for line in (captured.out + captured.err).replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(line.startswith("Loading weights") for line in lines), lines


def test_audio_classifier_loads_an_audio_visual_folder_with_a_short_report(saved_classifier, make_inputs, caplog):
    model, folder, _, _ = saved_classifier
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            audio = AutoModelForAudioClassification.from_pretrained(folder)
    finally:
        hf_logging.disable_propagation()
    text = caplog.text
    # Only the new clip head is reported (the audio-visual one classifies [visual, audio] features).
    assert "clip_head.classifier.weight" in text and "UNEXPECTED" not in text and "MISMATCH" not in text
    reported = {line.split("|")[0].strip() for line in text.splitlines() if "| MISSING" in line}
    assert reported == {"clip_head.classifier.weight", "clip_head.classifier.bias"}
    assert isinstance(audio, AVBertForAudioClassification) and audio.avbert.visual_encoder is None
    assert audio.clip_head.classifier.weight.shape[1] == model.config.audio_feature_size
    assert torch.count_nonzero(audio.clip_head.classifier.bias) == 0
    for name, tensor in audio.avbert.audio_encoder.state_dict().items():
        torch.testing.assert_close(tensor, model.avbert.audio_encoder.state_dict()[name], rtol=0, atol=0, msg=name)
    with torch.no_grad():
        assert audio.eval()(**make_inputs(video=False)).logits.shape == (BATCH_SIZE, NUM_LABELS)


def test_pooled_output_and_single_modality_features(make_config, make_inputs):
    model = build(AVBertModel, make_config(), attn_implementation="eager").eval()
    inputs = make_inputs()
    with torch.no_grad():
        output = model(**inputs)
        video = model.get_video_features(inputs["pixel_values"], output_hidden_states=True)
        audio = model.get_audio_features(inputs["input_features"])
        visual_only = model(pixel_values=inputs["pixel_values"])
    hidden = model.config.hidden_size
    summaries = output.last_hidden_state[:, [0, NUM_CLIPS + 1]]
    torch.testing.assert_close(output.pooler_output, summaries.mean(dim=1))
    # The visual stage does not see the sound: the video embedding is the visual stage's summary output.
    torch.testing.assert_close(video.last_hidden_state, output.visual_last_hidden_state)
    torch.testing.assert_close(video.pooler_output, output.visual_last_hidden_state[:, 0])
    torch.testing.assert_close(video.pooler_output, visual_only.pooler_output)
    assert len(video.hidden_states) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(audio.pooler_output, output.audio_last_hidden_state[:, 0])
    assert video.pooler_output.shape == audio.pooler_output.shape == (BATCH_SIZE, hidden)
    as_tuple = model.get_audio_features(inputs["input_features"], return_dict=False)
    torch.testing.assert_close(as_tuple[1], audio.pooler_output)


def test_features_of_a_cnn_only_model_are_the_mean_clip_features(make_config, make_inputs):
    model = build(AVBertModel, make_config(use_transformer=False)).eval()
    inputs = make_inputs()
    with torch.no_grad():
        output = model(**inputs)
        video = model.get_video_features(inputs["pixel_values"])
    torch.testing.assert_close(video.last_hidden_state, output.visual_features)
    torch.testing.assert_close(video.pooler_output, output.visual_features.mean(dim=1))
    assert output.pooler_output is None


def test_state_dict_has_no_orthogonal_cache(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config()).eval()
    keys_before = set(model.state_dict())
    with torch.no_grad():
        model(**make_inputs())  # fills the rotation cache
    keys_after = set(model.state_dict())
    assert keys_after == keys_before
    assert not any("cache" in key or key.endswith("._B") for key in keys_after)


# ----------------------------------------------------------------------------------------------------------------
# Initialization
# ----------------------------------------------------------------------------------------------------------------


def deterministic_tensors(model):
    """Everything `_init_weights` sets without randomness: buffers, norm affine parameters, Linear biases."""
    tensors = dict(model.named_buffers())
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)):
            tensors.update({f"{module_name}.{n}": p for n, p in module.named_parameters(recurse=False)})
        elif isinstance(module, nn.Linear) and module.bias is not None:
            tensors[f"{module_name}.bias"] = module.bias
    return tensors


def test_init_is_reproducible_under_a_seed(make_config):
    assert_same_state(
        build(AVBertForVideoClassification, make_config(), seed=3),
        build(AVBertForVideoClassification, make_config(), seed=3),
    )
    different = build(AVBertForVideoClassification, make_config(), seed=4)
    first = build(AVBertForVideoClassification, make_config(), seed=3)
    assert not torch.equal(different.clip_head.classifier.weight, first.clip_head.classifier.weight)


def test_from_pretrained_without_weights_initializes_everything(make_config):
    """test_can_init_all_missing_weights / test_init_weights_can_init_buffers: the meta-device paths initialize every
    tensor, identically to each other under a seed and with the same deterministic values as `__init__`."""
    config = make_config()
    torch.manual_seed(0)
    from_nothing = AVBertForVideoClassification.from_pretrained(None, config=config, state_dict={})
    with torch.device("meta"):
        on_meta = AVBertForVideoClassification(config)
    on_meta.to_empty(device="cpu")
    torch.manual_seed(0)
    on_meta.init_weights()
    assert_same_state(from_nothing, on_meta)

    reference = build(AVBertForVideoClassification, config)
    expected = deterministic_tensors(reference)
    for candidate in (from_nothing, on_meta):
        for name, tensor in candidate.state_dict().items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all() and tensor.abs().max() < 100, name
        for name, tensor in deterministic_tensors(candidate).items():
            assert torch.equal(tensor, expected[name]), name


@pytest.mark.parametrize("path", ["init", "from_pretrained"])
def test_zero_init_final_batch_norm(make_config, path):
    config = make_config(zero_init_final_batch_norm=True)
    if path == "init":
        model = build(AVBertForVideoClassification, config)
    else:
        model = AVBertForVideoClassification.from_pretrained(None, config=config, state_dict={})
    blocks = [m for m in model.modules() if isinstance(m, AVBertBottleneck)]
    assert len(blocks) == 6
    for block in blocks:
        assert torch.equal(block.bn3.weight, torch.zeros_like(block.bn3.weight))


def test_batch_norm_init(make_config):
    model = build(AVBertForVideoClassification, make_config(zero_init_final_batch_norm=False))
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d))]
    assert norms
    for norm in norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))
        assert norm.num_batches_tracked.item() == 0
        assert (norm.eps, norm.momentum) == (1e-5, 0.1)


def test_linear_embedding_and_conv_init(make_config):
    config = make_config(hidden_size=128, intermediate_size=256, initializer_range=0.02, max_position_embeddings=64)
    model = build(AVBertForVideoClassification, config)
    large_linears = {
        "sequence_head.visual_dense": model.sequence_head.visual_dense,  # 256 x 128
        "transformer shared output map": model.avbert.transformer.layers[0].output.shared,  # 8 x 128
        "transformer private output map": model.avbert.transformer.layers[0].output.private[0],  # 256 x 8
    }
    for name, linear in large_linears.items():
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1), name
        assert abs(linear.weight.mean().item()) < 0.002, name
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is not None:
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
        if isinstance(module, nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
    position = model.avbert.multimodal_embeddings.position_embeddings.weight  # 64 x 128
    assert position.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.avbert.visual_projection.summary_token.std().item() == pytest.approx(0.02, rel=0.3)
    # MSRA fill: Kaiming normal with fan_out and the ReLU gain.
    stem = model.avbert.visual_encoder.stem_conv.weight  # (4, 3, 5, 7, 7)
    fan_out = stem.shape[0] * stem[0, 0].numel()
    assert stem.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)


@pytest.mark.parametrize("orthogonal_init, max_angle", [("cayley", 1.0), ("henaff", math.pi)])
@pytest.mark.parametrize("orthogonal_map", ["matrix_exp", "cayley"])
def test_orthogonal_init(make_config, orthogonal_init, max_angle, orthogonal_map):
    model = build(AVBertModel, make_config(orthogonal_init=orthogonal_init, orthogonal_map=orthogonal_map))
    modules = orthogonal_modules(model)
    assert len(modules) == 18
    size = model.config.orthogonal_size
    identity = torch.eye(size)
    angles = []
    for name, module in modules:
        assert torch.equal(module.base, identity), name
        generator = module.generator
        torch.testing.assert_close(generator, -generator.T, rtol=0, atol=0)
        rows = torch.arange(0, size, 2)
        block_angles = generator[rows, rows + 1]
        off_blocks = generator.triu(1).clone()
        off_blocks[rows, rows + 1] = 0
        assert torch.equal(off_blocks, torch.zeros_like(off_blocks)), f"{name}: not block-diagonal 2x2"
        angles.append(block_angles)
        with torch.no_grad():
            rotation = module()
        torch.testing.assert_close(rotation @ rotation.T, identity, rtol=0, atol=1e-5)
    angles = torch.cat(angles)
    assert angles.abs().max() <= max_angle
    if orthogonal_init == "cayley":
        assert (angles <= 0).all()  # -tan(u / 2), u ~ U(0, pi / 2)
    else:
        assert angles.abs().max() > 1 and (angles > 0).any() and (angles < 0).any()  # U(-pi, pi)


@pytest.mark.parametrize("orthogonal_map", ["matrix_exp", "cayley"])
def test_orthogonal_map_is_orthogonal_for_any_generator(make_config, orthogonal_map):
    model = build(AVBertModel, make_config(orthogonal_map=orthogonal_map))
    module = orthogonal_modules(model)[0][1]
    with torch.no_grad():
        module.generator.copy_(torch.randn_like(module.generator) * 2)  # a full matrix: only its upper triangle counts
        rotation = module()
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(rotation.shape[0]), rtol=0, atol=1e-5)
    assert torch.linalg.det(rotation).item() == pytest.approx(1.0, abs=1e-5)  # a rotation, not a reflection


# ----------------------------------------------------------------------------------------------------------------
# Determinism, batching, numerics
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_determinism_in_eval(make_config, make_inputs, model_class):
    config = make_config(**AUDIO_ONLY) if model_class is AVBertForAudioClassification else make_config()
    model = build(model_class, config).eval()
    inputs = model_inputs(model, make_inputs)
    with torch.no_grad():
        first, second = model(**inputs), model(**inputs)
    assert first.keys() == second.keys()
    for name in first:
        if torch.is_tensor(first[name]):
            assert torch.equal(first[name], second[name]), name
            assert torch.isfinite(first[name]).all(), name


@pytest.mark.parametrize(
    "model_class, overrides",
    [
        (AVBertModel, {}),
        (AVBertForVideoClassification, {}),
        (AVBertForVideoClassification, {"fusion": "late"}),
        (AVBertForVideoClassification, {"use_audio": False, "use_transformer": False}),
        (AVBertForAudioClassification, AUDIO_ONLY),
    ],
    ids=["backbone", "av-classifier", "late-fusion", "visual-cnn-only", "audio-classifier"],
)
def test_batching_equivalence(make_config, make_inputs, model_class, overrides):
    model = build(model_class, make_config(**overrides)).eval()
    batched = model_inputs(model, make_inputs)
    single = {name: tensor[:1] for name, tensor in batched.items()}
    with torch.no_grad():
        batched_output, single_output = model(**batched), model(**single)
    compared = 0
    for name, value in batched_output.items():
        if torch.is_tensor(value):
            assert torch.isfinite(value).all(), name
            torch.testing.assert_close(value[:1], single_output[name], rtol=1e-5, atol=1e-5, msg=name)
            compared += 1
    assert compared >= 2


def test_outputs_have_documented_shapes(make_config, make_inputs, labels):
    model = build(AVBertForVideoClassification, make_config()).eval()
    with torch.no_grad():
        output = model(**make_inputs(), labels=labels)
    assert isinstance(output, AVBertClassifierOutput)
    assert output.loss.shape == ()
    assert output.logits.shape == (BATCH_SIZE, NUM_LABELS)
    assert output.clip_logits.shape == output.sequence_logits.shape == (BATCH_SIZE, NUM_CLIPS, NUM_LABELS)
    with torch.no_grad():
        backbone = model.avbert(**make_inputs())
    assert isinstance(backbone, AVBertModelOutput)
    assert backbone.visual_features.shape == backbone.audio_features.shape == (BATCH_SIZE, NUM_CLIPS, 32)
    assert backbone.last_hidden_state.shape == (BATCH_SIZE, 2 * (NUM_CLIPS + 1), 32)


# ----------------------------------------------------------------------------------------------------------------
# Hidden states, attentions, tuple outputs
# ----------------------------------------------------------------------------------------------------------------


def check_stage_outputs(hidden_states, attentions, config, sequence_length):
    assert len(hidden_states) == config.num_hidden_layers + 1
    assert len(attentions) == config.num_hidden_layers
    for state in hidden_states:
        assert state.shape == (BATCH_SIZE, sequence_length, config.hidden_size)
    for attention in attentions:
        assert attention.shape == (BATCH_SIZE, config.num_attention_heads, sequence_length, sequence_length)
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))


@pytest.mark.parametrize("via", ["kwargs", "config"])
def test_hidden_states_and_attentions(make_config, make_inputs, via):
    config = make_config()
    model = build(AVBertForVideoClassification, config, attn_implementation="eager").eval()
    assert model.config._attn_implementation == "eager"
    kwargs = {}
    if via == "kwargs":
        kwargs = {"output_hidden_states": True, "output_attentions": True}
    else:
        model.config.output_hidden_states = True
        model.config.output_attentions = True
    inputs = make_inputs()
    with torch.no_grad():
        backbone = model.avbert(**inputs, **kwargs)
        classifier = model(**inputs, **kwargs)
    clips = NUM_CLIPS + 1
    check_stage_outputs(backbone.hidden_states, backbone.attentions, config, 2 * clips)
    check_stage_outputs(backbone.visual_hidden_states, backbone.visual_attentions, config, clips)
    check_stage_outputs(backbone.audio_hidden_states, backbone.audio_attentions, config, clips)
    assert torch.equal(backbone.hidden_states[-1], backbone.last_hidden_state)
    assert torch.equal(backbone.visual_hidden_states[-1], backbone.visual_last_hidden_state)
    check_stage_outputs(classifier.hidden_states, classifier.attentions, config, 2 * clips)
    for ours, theirs in zip(classifier.hidden_states, backbone.hidden_states, strict=True):
        assert torch.equal(ours, theirs)


def test_no_hidden_states_or_attentions_by_default(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config(), attn_implementation="eager").eval()
    with torch.no_grad():
        output = model.avbert(**make_inputs())
    for name in ("hidden_states", "attentions", "visual_hidden_states", "audio_attentions"):
        assert getattr(output, name) is None, name


def test_hidden_states_retain_gradients(make_config, make_inputs, labels):
    model = build(AVBertForVideoClassification, make_config(**NO_DROPOUT), attn_implementation="eager").train()
    output = model(**make_inputs(), labels=labels, output_hidden_states=True, output_attentions=True)
    output.hidden_states[0].retain_grad()
    output.attentions[0].retain_grad()
    output.loss.backward()
    assert output.hidden_states[0].grad is not None and output.hidden_states[0].grad.abs().sum() > 0
    assert output.attentions[0].grad is not None and output.attentions[0].grad.abs().sum() > 0


def flatten_outputs(values):
    for value in values:
        if isinstance(value, (tuple, list)):
            yield from flatten_outputs(value)
        else:
            yield value


RETURN_DICT_VIA = [
    pytest.param(model_class, via, id=f"{model_class.__name__}-{via}")
    for model_class in MODEL_CLASSES
    for via in ("kwarg", "config")
]


@pytest.mark.parametrize("model_class, via", RETURN_DICT_VIA)
def test_tuple_output_equals_dict_output(make_config, make_inputs, model_class, via):
    config = make_config(**AUDIO_ONLY) if model_class is AVBertForAudioClassification else make_config()
    model = build(model_class, config, attn_implementation="eager").eval()
    inputs = model_inputs(model, make_inputs)
    extra = {} if model_class is AVBertForAudioClassification else {"output_hidden_states": True}
    with torch.no_grad():
        as_dict = model(**inputs, **extra)
        if via == "kwarg":
            as_tuple = model(**inputs, **extra, return_dict=False)
        else:
            model.config.return_dict = False
            as_tuple = model(**inputs, **extra)
    assert isinstance(as_tuple, tuple)
    expected = list(flatten_outputs(as_dict.to_tuple()))
    actual = list(flatten_outputs(as_tuple))
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected, strict=True):
        assert torch.equal(a, b)


def test_backbone_output_zero_is_last_hidden_state(make_config, make_inputs):
    model = build(AVBertModel, make_config()).eval()
    with torch.no_grad():
        output = model(**make_inputs())
        as_tuple = model(**make_inputs(), return_dict=False)
    assert next(iter(output.keys())) == "last_hidden_state"
    assert torch.equal(output[0], output.last_hidden_state)
    assert torch.equal(as_tuple[0], output.last_hidden_state)


# ----------------------------------------------------------------------------------------------------------------
# Attention implementations
# ----------------------------------------------------------------------------------------------------------------


def test_sdpa_is_the_default_and_matches_eager(make_config, make_inputs):
    config = make_config()
    eager = build(AVBertForVideoClassification, config, attn_implementation="eager").eval()
    sdpa = build(AVBertForVideoClassification, make_config())
    sdpa.load_state_dict(eager.state_dict())
    sdpa.eval()
    assert sdpa.config._attn_implementation == "sdpa"
    assert eager.config._attn_implementation == "eager"
    inputs = make_inputs()
    with torch.no_grad():
        eager_output = eager(**inputs, output_attentions=True)
        sdpa_output = sdpa(**inputs)
    # The comparison means something only if the attention is far from uniform.
    attention = eager_output.attentions[-1]
    assert (attention - 1 / attention.shape[-1]).abs().max() > 0.05
    for name in ("logits", "clip_logits", "sequence_logits"):
        torch.testing.assert_close(sdpa_output[name], eager_output[name], rtol=1e-5, atol=1e-5, msg=name)


def test_output_attentions_under_sdpa_warns_and_returns_no_maps(make_config, make_inputs):
    # As the in-tree 5.24 models: SDPA computes no attention maps; asking for them warns once and gives `None` per
    # layer instead of failing.
    from transformers.integrations import sdpa_attention

    model = build(AVBertForVideoClassification, make_config()).eval()
    messages = []
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(sdpa_attention.logger, "warning", lambda message, *args, **kwargs: messages.append(message))
        sdpa_attention.logger.warning_once.cache_clear()
        output = model(**make_inputs(), output_attentions=True)
    assert output.attentions == (None,) * model.config.num_hidden_layers
    assert any("output_attentions" in message for message in messages)


def test_set_attn_implementation_switches_at_runtime(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config()).eval()
    inputs = make_inputs()
    with torch.no_grad():
        sdpa_logits = model(**inputs).logits
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == model.avbert.config._attn_implementation == "eager"
        output = model(**inputs, output_attentions=True)
    assert output.attentions is not None and len(output.attentions) == model.config.num_hidden_layers
    torch.testing.assert_close(output.logits, sdpa_logits, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Gradients and training
# ----------------------------------------------------------------------------------------------------------------


def enable_checkpointing(model, **checkpointing_kwargs):
    """transformers v5 name, falling back to the v4 one; must not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing_kwargs or None)
        else:  # pragma: no cover - transformers < 5
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs or None)


# Reentrant checkpointing sees only the layer's positional tensors: the shared rotations must be among them (inside a
# container they were not, and the second application of the layer backpropagated through a freed graph).
@pytest.mark.parametrize("use_reentrant", [None, False, True], ids=["default", "non-reentrant", "reentrant"])
def test_gradient_checkpointing_gives_same_loss_and_gradients(make_config, make_inputs, labels, use_reentrant):
    assert hasattr(AVBertForVideoClassification, "activation_checkpointing_enable")
    model = build(AVBertForVideoClassification, make_config(**NO_DROPOUT)).train()
    checkpointed = copy.deepcopy(model)
    enable_checkpointing(checkpointed, **({} if use_reentrant is None else {"use_reentrant": use_reentrant}))
    assert checkpointed.is_activation_checkpointing
    assert all(layer.gradient_checkpointing for layer in checkpointed.avbert.transformer.layers)
    inputs = make_inputs()
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    checkpointed_loss = checkpointed(**inputs, labels=labels).loss
    checkpointed_loss.backward()
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=1e-6)
    gradients = {name: p.grad for name, p in checkpointed.named_parameters()}
    for name, parameter in model.named_parameters():
        assert (parameter.grad is None) == (gradients[name] is None), name
        if parameter.grad is not None:
            torch.testing.assert_close(gradients[name], parameter.grad, rtol=1e-5, atol=1e-5, msg=name)

    checkpointed.activation_checkpointing_disable()
    assert not checkpointed.is_activation_checkpointing


def assert_every_parameter_has_a_gradient(model):
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    # Gradients may vanish inside residual blocks whose last BatchNorm has zero scale; nowhere else.
    zero = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and ".stages." not in name and p.grad.abs().max() == 0
    ]
    assert not zero, f"parameters with an all-zero gradient: {zero}"


def test_every_parameter_gets_a_gradient(make_config, make_inputs, labels):
    model = build(AVBertForVideoClassification, make_config(**NO_DROPOUT)).train()
    model(**make_inputs(), labels=labels).loss.backward()
    assert_every_parameter_has_a_gradient(model)
    generators = [name for name, _ in model.named_parameters() if name.endswith(".generator")]
    assert len(generators) == 18
    head_parameters = [name for name, _ in model.named_parameters() if name.split(".")[0].endswith("_head")]
    assert {name.split(".")[0] for name in head_parameters} == {"clip_head", "sequence_head"}


@pytest.mark.parametrize(
    "model_class, overrides",
    [(AVBertForVideoClassification, {}), (AVBertForAudioClassification, AUDIO_ONLY)],
    ids=["av-classifier", "audio-classifier"],
)
def test_training_reduces_the_loss(make_config, make_inputs, labels, model_class, overrides):
    model = build(model_class, make_config(**NO_DROPOUT, **overrides)).train()
    inputs = model_inputs(model, make_inputs)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.9 * losses[0], losses


def per_clip_losses(output, labels, loss_fn):
    heads = [output.clip_logits] + ([output.sequence_logits] if output.sequence_logits is not None else [])
    return sum(loss_fn(head.flatten(0, 1), labels.repeat_interleave(head.shape[1])) for head in heads)


@pytest.mark.parametrize(
    "model_class, overrides",
    [(AVBertForVideoClassification, {}), (AVBertForAudioClassification, AUDIO_ONLY)],
    ids=["av-classifier", "audio-classifier"],
)
def test_multi_margin_loss(make_config, make_inputs, labels, model_class, overrides):
    model = build(model_class, make_config(classifier_loss="multi_margin", **overrides)).eval()
    with torch.no_grad():
        output = model(**model_inputs(model, make_inputs), labels=labels)
    expected = per_clip_losses(output, labels, lambda x, y: F.multi_margin_loss(x, y, margin=0.1))
    torch.testing.assert_close(output.loss, expected)
    assert output.loss > 0


def test_cross_entropy_loss_is_summed_over_heads(make_config, make_inputs, labels):
    model = build(AVBertForVideoClassification, make_config()).eval()
    with torch.no_grad():
        output = model(**make_inputs(), labels=labels)
    torch.testing.assert_close(output.loss, per_clip_losses(output, labels, F.cross_entropy))


@pytest.mark.parametrize("classifier_loss", ["cross_entropy", "multi_margin"])
def test_num_items_in_batch_gives_the_mean(make_config, make_inputs, labels, classifier_loss):
    model = build(AVBertForVideoClassification, make_config(classifier_loss=classifier_loss)).eval()
    inputs = make_inputs()
    with torch.no_grad():
        mean_loss = model(**inputs, labels=labels).loss
        counted_loss = model(**inputs, labels=labels, num_items_in_batch=torch.tensor(BATCH_SIZE)).loss
        doubled_loss = model(**inputs, labels=labels, num_items_in_batch=torch.tensor(2 * BATCH_SIZE)).loss
    torch.testing.assert_close(counted_loss, mean_loss)
    torch.testing.assert_close(doubled_loss, mean_loss / 2)


@pytest.mark.parametrize(
    "problem_type, num_labels, labels",
    [
        ("multi_label_classification", NUM_LABELS, torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 0, 1]])),
        ("regression", 1, torch.tensor([0.5, -1.0])),
    ],
)
def test_problem_types(make_config, make_inputs, problem_type, num_labels, labels):
    model = build(AVBertForVideoClassification, make_config(problem_type=problem_type, num_labels=num_labels))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no broadcasting warning from the regression loss
        output = model(**make_inputs(), labels=labels)
    assert output.logits.shape == (BATCH_SIZE, num_labels)
    assert torch.isfinite(output.loss)
    output.loss.backward()


def test_single_output_logits_without_problem_type(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config(num_labels=1)).eval()
    with torch.no_grad():
        output = model(**make_inputs())
    expected = torch.cat([output.clip_logits, output.sequence_logits], dim=1).mean(dim=1)
    torch.testing.assert_close(output.logits, expected)


@pytest.mark.parametrize(
    "model_class, overrides",
    [
        (AVBertForVideoClassification, {}),
        (AVBertForVideoClassification, {"use_audio": False, "use_transformer": False}),
        (AVBertForAudioClassification, AUDIO_ONLY),
    ],
    ids=["two-heads", "visual-cnn-only", "audio-classifier"],
)
def test_logits_are_the_log_of_the_mean_softmax(make_config, make_inputs, model_class, overrides):
    model = build(model_class, make_config(**overrides)).eval()
    with torch.no_grad():
        output = model(**model_inputs(model, make_inputs))
    heads = [output.clip_logits] + ([output.sequence_logits] if output.sequence_logits is not None else [])
    expected = torch.cat([head.softmax(-1) for head in heads], dim=1).mean(dim=1)
    torch.testing.assert_close(output.logits.softmax(-1), expected)
    torch.testing.assert_close(output.logits.exp().sum(-1), torch.ones(BATCH_SIZE))


# ----------------------------------------------------------------------------------------------------------------
# Every configuration option
# ----------------------------------------------------------------------------------------------------------------

CONFIG_OPTIONS = {
    "mid-fusion": (AVBertForVideoClassification, {"fusion": "mid"}),
    "late-fusion": (AVBertForVideoClassification, {"fusion": "late"}),
    "early-fusion": (AVBertForVideoClassification, {"fusion": "early"}),
    "layers-not-shared": (AVBertForVideoClassification, {"sharing_across_layers": False}),
    "models-not-shared": (AVBertForVideoClassification, {"sharing_across_models": False}),
    "nothing-shared": (AVBertForVideoClassification, {"sharing_across_layers": False, "sharing_across_models": False}),
    "no-decomposition": (AVBertForVideoClassification, {"use_decomposition": False}),
    "cayley-map": (AVBertForVideoClassification, {"orthogonal_map": "cayley"}),
    "henaff-init": (AVBertForVideoClassification, {"orthogonal_init": "henaff"}),
    "visual-cnn-only": (AVBertForVideoClassification, {"use_audio": False, "use_transformer": False}),
    "visual-with-transformer": (AVBertForVideoClassification, {"use_audio": False}),
    "audio-with-transformer": (AVBertForVideoClassification, {"use_visual": False}),
    "av-cnn-only": (AVBertForVideoClassification, {"use_transformer": False}),
    "audio-classifier": (AVBertForAudioClassification, AUDIO_ONLY),
}


@pytest.mark.parametrize("model_class, overrides", CONFIG_OPTIONS.values(), ids=CONFIG_OPTIONS.keys())
def test_config_option_forward_and_backward(make_config, make_inputs, labels, model_class, overrides):
    config = make_config(**NO_DROPOUT, **overrides)
    model = build(model_class, config).train()
    output = model(**model_inputs(model, make_inputs), labels=labels)
    assert output.logits.shape == (BATCH_SIZE, NUM_LABELS)
    assert output.clip_logits.shape == (BATCH_SIZE, NUM_CLIPS, NUM_LABELS)
    has_sequence_head = bool(config.transformer_stages) and model_class is AVBertForVideoClassification
    assert (output.sequence_logits is not None) == has_sequence_head
    assert torch.isfinite(output.loss) and torch.isfinite(output.logits).all()
    output.loss.backward()
    assert_every_parameter_has_a_gradient(model)
    num_orthogonal = len(orthogonal_modules(model))
    if config.use_decomposition and config.transformer_stages:
        layers = 1 if config.sharing_across_layers else config.num_hidden_layers
        assert num_orthogonal == 6 * layers * len(config.transformer_stages)
    else:
        assert num_orthogonal == 0


@pytest.mark.parametrize(
    "overrides, sequence_length, modules",
    [
        ({"fusion": "mid"}, 8, {"visual_embeddings", "audio_embeddings", "multimodal_embeddings", "transformer"}),
        ({"fusion": "late"}, 8, {"visual_embeddings", "audio_embeddings", "transformer"}),
        ({"fusion": "early"}, 8, {"multimodal_embeddings", "transformer"}),
        (
            {"sharing_across_models": False},
            8,
            {"visual_embeddings", "audio_embeddings", "multimodal_embeddings"}
            | {"visual_transformer", "audio_transformer", "multimodal_transformer"},
        ),
        ({"use_audio": False}, 4, {"visual_embeddings", "transformer"}),
    ],
)
def test_backbone_structure(make_config, make_inputs, overrides, sequence_length, modules):
    model = build(AVBertModel, make_config(**overrides)).eval()
    stage_modules = {
        "visual_embeddings",
        "audio_embeddings",
        "multimodal_embeddings",
        "transformer",
        "visual_transformer",
        "audio_transformer",
        "multimodal_transformer",
    }
    assert {name for name in stage_modules if getattr(model, name) is not None} == modules
    with torch.no_grad():
        output = model(**model_inputs(model, make_inputs))
    assert output.last_hidden_state.shape == (BATCH_SIZE, sequence_length, model.config.hidden_size)


def test_unshared_layers_are_distinct(make_config):
    model = build(AVBertModel, make_config(sharing_across_layers=False, num_hidden_layers=2))
    first, second = model.transformer.layers
    assert not torch.equal(first.attention.query.shared.weight, second.attention.query.shared.weight)


# ----------------------------------------------------------------------------------------------------------------
# Inputs: missing modalities and invalid tensors
# ----------------------------------------------------------------------------------------------------------------


def test_av_classifier_needs_input_features(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config()).eval()
    with pytest.raises(ValueError, match="needs input_features"):
        model(**make_inputs(audio=False))


def test_av_classifier_needs_pixel_values(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config()).eval()
    with pytest.raises(ValueError, match="needs pixel_values"):
        model(**make_inputs(video=False))


@pytest.mark.parametrize("modality", ["visual", "audio"])
def test_backbone_runs_one_modality(make_config, make_inputs, modality):
    model = build(AVBertModel, make_config(), attn_implementation="eager").eval()
    inputs = make_inputs(video=modality == "visual", audio=modality == "audio")
    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True)
    other = "audio" if modality == "visual" else "visual"
    assert getattr(output, f"{other}_features") is None
    assert getattr(output, f"{other}_last_hidden_state") is None
    stage_output = getattr(output, f"{modality}_last_hidden_state")
    assert stage_output.shape == (BATCH_SIZE, NUM_CLIPS + 1, model.config.hidden_size)
    assert torch.equal(output.last_hidden_state, stage_output)  # the single-modality stage is the last stage
    assert len(output.hidden_states) == model.config.num_hidden_layers + 1


def test_backbone_needs_some_input(make_config):
    model = build(AVBertModel, make_config())
    with pytest.raises(ValueError, match="needs pixel_values, input_features, or both"):
        model()


def test_early_fusion_needs_both_modalities(make_config, make_inputs):
    model = build(AVBertModel, make_config(fusion="early")).eval()
    with pytest.raises(ValueError, match=r"Early fusion .* needs both"):
        model(**make_inputs(audio=False))


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda x: {**x, "pixel_values": x["pixel_values"][0]}, ValueError, r"pixel_values must have shape .*6 dims"),
        (lambda x: {**x, "input_features": x["input_features"][0]}, ValueError, r"input_features must .*5 dims"),
        (lambda x: {**x, "pixel_values": x["pixel_values"].long()}, ValueError, "pixel_values must be a floating"),
        (lambda x: {**x, "input_features": x["input_features"].int()}, ValueError, "input_features must be a float"),
        (lambda x: {**x, "pixel_values": x["pixel_values"].numpy()}, TypeError, "pixel_values must be a torch.Tensor"),
        (
            lambda x: {**x, "pixel_values": x["pixel_values"][:, :2]},
            ValueError,
            r"same \(batch, num_clips\), got \(2, 2\) and \(2, 3\)",
        ),
        (lambda x: {k: v[:0] for k, v in x.items()}, ValueError, r"pixel_values has shape \(0, 3, .*empty batch"),
        (lambda x: {k: v[:, :0] for k, v in x.items()}, ValueError, r"pixel_values has shape \(2, 0, .*zero clips"),
    ],
    ids=[
        "video-ndim",
        "audio-ndim",
        "video-int",
        "audio-int",
        "video-numpy",
        "clip-count-mismatch",
        "empty-batch",
        "zero-clips",
    ],
)
def test_invalid_inputs_raise(make_config, make_inputs, change, error, message):
    model = build(AVBertForVideoClassification, make_config()).eval()
    with pytest.raises(error, match=message):
        model(**change(make_inputs()))


def test_too_many_clips_raise(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config()).eval()
    max_clips = model.config.max_position_embeddings - 1
    with torch.no_grad():  # any count up to max_position_embeddings - 1 works, not only config.num_clips
        assert model(**make_inputs(num_clips=max_clips)).clip_logits.shape[1] == max_clips
        assert model(**make_inputs(batch_size=1, num_clips=1)).logits.shape == (1, NUM_LABELS)
    with pytest.raises(ValueError, match=r"Got 8 clips per video, but max_position_embeddings=8 allows at most 7"):
        model(**make_inputs(num_clips=max_clips + 1))


def test_input_of_a_missing_encoder_raises(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config(use_audio=False)).eval()
    with pytest.raises(ValueError, match=r"no audio encoder \(use_audio=False\) but got input_features"):
        model(**make_inputs())


def test_audio_classifier_inputs(make_config, make_inputs):
    with pytest.raises(ValueError, match="needs an audio encoder"):
        AVBertForAudioClassification(make_config(use_audio=False, use_transformer=False))
    model = build(AVBertForAudioClassification, make_config(**AUDIO_ONLY)).eval()
    with pytest.raises(ValueError, match="needs input_features"):
        model()


def test_main_input_name_is_the_first_forward_argument():
    for model_class in MODEL_CLASSES:
        first_argument = list(inspect.signature(model_class.forward).parameters)[1]
        assert first_argument == model_class.main_input_name, model_class.__name__
    assert AVBertForAudioClassification.main_input_name == "input_features"


def test_base_model_prefix(make_config):
    model = build(AVBertForVideoClassification, make_config())
    assert model.base_model_prefix == "avbert"
    assert model.base_model is model.avbert
    assert all(key.startswith(("avbert.", "clip_head.", "sequence_head.")) for key in model.state_dict())


# ----------------------------------------------------------------------------------------------------------------
# Linear evaluation (freeze_encoder)
# ----------------------------------------------------------------------------------------------------------------


def test_freeze_encoder(make_config, make_inputs, labels):
    model = build(AVBertForAudioClassification, make_config(freeze_encoder=True, **AUDIO_ONLY))
    assert all(not p.requires_grad for p in model.avbert.parameters())
    assert all(p.requires_grad for p in model.clip_head.parameters())

    model.train()
    assert model.training and model.clip_head.training and model.clip_head.dropout.training
    assert not any(module.training for module in model.avbert.modules())

    backbone_state = {name: tensor.clone() for name, tensor in model.avbert.state_dict().items()}
    head_weight = model.clip_head.classifier.weight.clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = model(**make_inputs(video=False), labels=labels).loss
    loss.backward()
    optimizer.step()
    for name, tensor in model.avbert.state_dict().items():  # weights and BatchNorm running statistics
        assert torch.equal(tensor, backbone_state[name]), name
    assert not torch.equal(model.clip_head.classifier.weight, head_weight)

    model.eval()
    assert not model.clip_head.training


def test_freeze_encoder_method(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config())
    model.freeze_encoder()
    assert model.config.freeze_encoder
    model.train()
    assert not model.avbert.training and model.sequence_head.training and model.clip_head.training
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"clip_head", "sequence_head"}


# ----------------------------------------------------------------------------------------------------------------
# Low precision and torch.compile
# ----------------------------------------------------------------------------------------------------------------


def test_bf16_autocast_is_close_to_fp32(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config()).eval()
    inputs = make_inputs()
    with torch.no_grad():
        reference = model(**inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(**inputs)
    for name in ("logits", "clip_logits", "sequence_logits"):
        assert torch.isfinite(output[name]).all(), name
        scale = reference[name].abs().max().item()
        torch.testing.assert_close(output[name].float(), reference[name], rtol=0.05, atol=0.05 * scale, msg=name)


def test_bf16_weights_forward(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config()).eval()
    inputs = make_inputs()
    with torch.no_grad():
        reference = model(**inputs).logits
        model.to(torch.bfloat16)
        output = model(**{name: tensor.to(torch.bfloat16) for name, tensor in inputs.items()}).logits
    assert output.dtype == torch.bfloat16
    assert torch.isfinite(output).all()
    torch.testing.assert_close(output.float(), reference, rtol=0.1, atol=0.1 * reference.abs().max().item())


def test_torch_compile_traces_in_one_graph(make_config, make_inputs):
    """Dynamo only (backend="eager"): the forward, including the orthogonal maps, compiles without graph breaks."""
    model = build(AVBertForVideoClassification, make_config()).eval()
    inputs = make_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        expected = model(**inputs).logits
        torch.testing.assert_close(compiled(**inputs).logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager(make_config, make_inputs):
    """The default inductor backend: 20 s with a warm inductor cache, 2.5 minutes from a cold one on 2 CPU cores."""
    model = build(AVBertForVideoClassification, make_config()).eval()
    inputs = make_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        expected = model(**inputs).logits
        torch.testing.assert_close(compiled(**inputs).logits, expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# The cached orthogonal matrices
# ----------------------------------------------------------------------------------------------------------------


def test_rotation_cache_follows_load_state_dict(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config(), seed=0).eval()
    other = build(AVBertForVideoClassification, make_config(), seed=1).eval()
    inputs = make_inputs()
    with torch.no_grad():
        before = model(**inputs).logits  # caches the rotations
        expected = other(**inputs).logits
        model.load_state_dict(other.state_dict())
        assert torch.equal(model(**inputs).logits, expected)

        model.load_state_dict(build(AVBertForVideoClassification, make_config(), seed=0).state_dict(), assign=True)
        assert torch.equal(model(**inputs).logits, before)


def test_rotation_cache_follows_in_place_generator_updates(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config()).eval()
    inputs = make_inputs()
    generator = model.avbert.transformer.layers[0].attention.query.rotations[2].generator  # multimodal query
    with torch.no_grad():
        before = model(**inputs).logits
        generator.add_(0.1)
        changed = model(**inputs).logits
        fresh = copy.deepcopy(model)  # a copy recomputes every rotation from its own generator
        assert torch.equal(changed, fresh(**inputs).logits)
        assert not torch.allclose(changed, before)
        generator.sub_(0.1)
        torch.testing.assert_close(model(**inputs).logits, before, rtol=0, atol=1e-6)


def test_rotation_is_recomputed_under_grad(make_config):
    model = build(AVBertModel, make_config())
    module = orthogonal_modules(model)[0][1]
    with torch.no_grad():
        cached = module()
        assert module() is cached  # reused without gradients
    first, second = module(), module()
    assert first.grad_fn is not None and first is not cached and second is not first
    torch.testing.assert_close(first.detach(), cached, rtol=0, atol=0)
    first.sum().backward()
    assert module.generator.grad is not None and module.generator.grad.abs().sum() > 0
    with torch.no_grad():
        module.generator.mul_(2)
    assert not torch.allclose(module().detach(), cached)


# ----------------------------------------------------------------------------------------------------------------
# Full-size parameter counts (meta device: no memory, no init)
# ----------------------------------------------------------------------------------------------------------------


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_of_the_released_architecture():
    with torch.device("meta"):
        model = AVBertForVideoClassification(AVBertConfig(num_labels=32))
    assert count(model.avbert.transformer) == 3_843_840
    assert count(model.avbert.visual_encoder) == 31_672_128
    assert count(model.avbert.audio_encoder) == 5_839_840
    assert count(model) == 46_261_856
