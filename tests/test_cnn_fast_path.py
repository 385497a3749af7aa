"""The CNNs' default fast path (BatchNorm folding in eval, channels-last) and their activation checkpointing."""

import copy
import json
import subprocess
import sys

import pytest
import test_conversion
import torch
from conftest import NO_DROPOUT
from safetensors.torch import load_file
from transformers import pipeline

from avbert import AVBertForAudioClassification, AVBertForVideoClassification
from avbert.convert_original_checkpoint import convert_checkpoint
from avbert.modeling_avbert import AVBertBottleneck


@pytest.fixture
def labels():
    return torch.tensor([1, 3])


def build(model_class, config, seed=0):
    torch.manual_seed(seed)
    return model_class(config)


def randomize_batch_norms(model, seed=0):
    """Non-trivial scales and running statistics, so that folding them is really tested."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            size = module.num_features
            with torch.no_grad():
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
    return model


def plain_copy(model):
    """The same model (same weights and statistics) on the plain path."""
    plain = copy.deepcopy(model)
    plain.config.cnn_fast_inference = plain.config.cnn_channels_last_training = False
    return plain


def batch_norm_calls(model, inputs):
    """How many BatchNorm modules ran in one forward (a folded one never runs)."""
    calls = []
    handles = [
        module.register_forward_hook(lambda *args: calls.append(1))
        for module in model.modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
    ]
    with torch.no_grad():
        output = model(**inputs)
    for handle in handles:
        handle.remove()
    return len(calls), output


def test_the_fast_path_is_the_default_and_matches_the_plain_path(make_config, make_inputs):
    model = randomize_batch_norms(build(AVBertForVideoClassification, make_config(**NO_DROPOUT))).eval()
    assert model.config.cnn_fast_inference
    inputs = make_inputs()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    fast_calls, fast = batch_norm_calls(model, inputs)
    with torch.no_grad():
        visual_map = model.avbert.visual_encoder(inputs["pixel_values"].flatten(0, 1))
        audio_map = model.avbert.audio_encoder(inputs["input_features"].flatten(0, 1))
    assert fast_calls == 0  # every BatchNorm folded into its convolution
    assert visual_map.is_contiguous(memory_format=torch.channels_last_3d)
    assert audio_map.is_contiguous(memory_format=torch.channels_last)

    model.config.cnn_fast_inference = False  # the one switch, read on every forward
    plain_calls, plain = batch_norm_calls(model, inputs)
    assert plain_calls == sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with torch.no_grad():
        assert model.avbert.visual_encoder(inputs["pixel_values"].flatten(0, 1)).is_contiguous()
    torch.testing.assert_close(fast.clip_logits, plain.clip_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.logits, plain.logits, rtol=1e-4, atol=1e-5)
    # Nothing is stored: the state dict is the same, so the model saves and loads the same on either path.
    assert all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())


def test_a_loaded_model_runs_the_fast_path_and_the_switch_is_saved(make_config, make_inputs, tmp_path):
    """What `pipeline(...)` and `avbert-evaluate` load: `from_pretrained` then eval, folded with no call. A config.json
    saved before the switch existed loads with the default; a saved `False` stays off."""
    model = randomize_batch_norms(build(AVBertForVideoClassification, make_config(**NO_DROPOUT)))
    model.save_pretrained(tmp_path / "fast")
    saved = json.loads((tmp_path / "fast" / "config.json").read_text())
    assert saved["cnn_fast_inference"] is True
    del saved["cnn_fast_inference"]
    (tmp_path / "fast" / "config.json").write_text(json.dumps(saved))
    inputs = make_inputs()
    loaded = AVBertForVideoClassification.from_pretrained(tmp_path / "fast").eval()
    assert loaded.config.cnn_fast_inference
    calls, fast = batch_norm_calls(loaded, inputs)
    assert calls == 0

    model.config.cnn_fast_inference = False
    model.save_pretrained(tmp_path / "plain")
    plain_model = AVBertForVideoClassification.from_pretrained(tmp_path / "plain").eval()
    assert not plain_model.config.cnn_fast_inference
    calls, plain = batch_norm_calls(plain_model, inputs)
    assert calls > 0
    torch.testing.assert_close(fast.logits, plain.logits, rtol=1e-4, atol=1e-5)


def test_fuse_for_inference_and_set_channels_last_are_deprecated_aliases_of_the_switches(make_config):
    model = build(AVBertForVideoClassification, make_config())
    with pytest.warns(FutureWarning, match="cnn_fast_inference = False"):
        assert model.fuse_for_inference(False) is model
    assert not model.config.cnn_fast_inference and not model.config.cnn_channels_last_training
    with pytest.warns(FutureWarning, match="cnn_channels_last_training"):
        assert model.set_channels_last() is model
    assert model.config.cnn_channels_last_training and not model.config.cnn_fast_inference
    with pytest.warns(FutureWarning):
        model.fuse_for_inference()
    assert model.config.cnn_fast_inference and model.config.cnn_channels_last_training


def test_folding_follows_later_weight_changes(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config(**NO_DROPOUT)).eval()
    inputs = make_inputs()
    with torch.no_grad():
        model(**inputs)
    randomize_batch_norms(model, seed=1)  # after a folded forward: a folded copy kept from it would now be stale
    with torch.no_grad():
        fast = model(**inputs).logits
        plain = plain_copy(model)(**inputs).logits
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def assert_same_training_state(actual, expected, gradient_tolerance, buffer_tolerance):
    """Same gradients (relative tolerance; absolute one tenth of it) and same BatchNorm running statistics."""
    gradients = dict(actual.named_parameters())
    for name, parameter in expected.named_parameters():
        torch.testing.assert_close(
            gradients[name].grad, parameter.grad, rtol=gradient_tolerance, atol=gradient_tolerance / 10, msg=name
        )
    for (name, buffer), actual_buffer in zip(expected.named_buffers(), actual.buffers(), strict=True):
        torch.testing.assert_close(actual_buffer, buffer, rtol=buffer_tolerance, atol=buffer_tolerance / 10, msg=name)


def test_fast_path_trains_like_the_plain_path(make_config, make_inputs, labels):
    """Training runs channels-last by default (`cnn_channels_last_training`); one training step gives the plain
    path's loss, gradients and running statistics to rounding. BatchNorm is never folded in training (it needs the
    batch statistics)."""
    model = randomize_batch_norms(build(AVBertForVideoClassification, make_config(**NO_DROPOUT))).train()
    assert model.config.cnn_channels_last_training
    plain = plain_copy(model)
    inputs = make_inputs()
    clips, features = inputs["pixel_values"].flatten(0, 1), inputs["input_features"].flatten(0, 1)
    with torch.no_grad():  # on copies: a training forward moves the running statistics
        assert copy.deepcopy(plain).avbert.visual_encoder(clips).is_contiguous()
        assert copy.deepcopy(model).avbert.visual_encoder(clips).is_contiguous(memory_format=torch.channels_last_3d)
        assert copy.deepcopy(model).avbert.audio_encoder(features).is_contiguous(memory_format=torch.channels_last)
    loss = model(**inputs, labels=labels).loss
    plain_loss = plain(**inputs, labels=labels).loss
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    plain_loss.backward()
    assert_same_training_state(model, plain, gradient_tolerance=1e-4, buffer_tolerance=1e-5)


# One channels-last training step of an audio CNN 8 wide (the demo's): its stage-0 shortcut is a strided 1x1
# convolution with 8 input channels, whose weight gradient oneDNN computes past its workspace on a channels-last input
# (a fatal abort on 80 x 128 log-mels; docs/performance.md). Run in a subprocess, so that an abort fails the test.
NARROW_AUDIO_CNN_STEP = """
import torch
from avbert import AVBertConfig, AVBertForAudioClassification

config = AVBertConfig(use_visual=False, use_transformer=False, audio_base_width=8, audio_depths=[1, 1], num_clips=4,
                      num_mel_bins=80, audio_num_frames=128, num_labels=3, classifier_dropout=0.0)
assert config.cnn_channels_last_training, "channels-last training is the default"
gradients = {}
for channels_last in (True, False):
    torch.manual_seed(0)
    model = AVBertForAudioClassification(config).train()
    model.config.cnn_channels_last_training = channels_last
    features = torch.randn(1, 4, 1, 80, 128, generator=torch.Generator().manual_seed(0))
    model(input_features=features, labels=torch.tensor([2])).loss.backward()
    gradients[channels_last] = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
assert gradients[True].keys() == gradients[False].keys()
for name, expected in gradients[False].items():
    torch.testing.assert_close(gradients[True][name], expected, rtol=1e-4, atol=1e-5, msg=name)
print("ok")
"""


def test_channels_last_training_of_a_narrow_cnn_runs_clear_of_the_onednn_bug():
    result = subprocess.run([sys.executable, "-c", NARROW_AUDIO_CNN_STEP], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("model_class", [AVBertForAudioClassification, AVBertForVideoClassification])
def test_cnn_checkpointing_matches_and_updates_running_statistics_once(
    make_config, make_inputs, labels, use_reentrant, model_class, fast
):
    """The audio classifier has no transformer layer: its checkpointable layers are the CNN blocks and stem.
    On the fast path the stems' channels-last input copies are made inside the checkpoint."""
    config = make_config(use_visual=model_class is AVBertForVideoClassification, use_transformer=False, **NO_DROPOUT)
    config.cnn_channels_last_training = fast
    model = randomize_batch_norms(build(model_class, config)).train()
    checkpointed = copy.deepcopy(model)
    checkpointed.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    assert checkpointed.is_activation_checkpointing
    blocks = [m for m in checkpointed.modules() if isinstance(m, AVBertBottleneck)]
    assert blocks and all(block.gradient_checkpointing for block in blocks)
    assert checkpointed.avbert.audio_encoder.gradient_checkpointing  # the stem

    inputs = make_inputs(video=config.use_visual)  # no input requires grad: the stems take their conv weight as one
    model(**inputs, labels=labels).loss.backward()
    checkpointed(**inputs, labels=labels).loss.backward()
    # The replay in the backward pass must not move the running statistics a second time: buffers match exactly.
    assert_same_training_state(checkpointed, model, gradient_tolerance=1e-5, buffer_tolerance=0)


def test_gradient_checkpointing_enable_checkpoints_the_visual_cnn(make_config):
    model = build(AVBertForVideoClassification, make_config())
    model.activation_checkpointing_enable()
    blocks = [m for m in model.modules() if isinstance(m, AVBertBottleneck)]
    assert blocks and all(block.gradient_checkpointing for block in blocks)
    assert model.avbert.visual_encoder.gradient_checkpointing  # the stem
    model.activation_checkpointing_disable()
    assert not any(module.gradient_checkpointing for module in [*blocks, model.avbert.visual_encoder])


# The parity tests of test_conversion.py run on the default, fast path; here they run again, unchanged, on the plain
# path: same fixtures, same tolerances.


@pytest.fixture
def plain_conversion(monkeypatch):
    convert = test_conversion.convert

    def convert_to_plain(*args, **kwargs):
        model = convert(*args, **kwargs)
        model.config.cnn_fast_inference = model.config.cnn_channels_last_training = False
        return model

    monkeypatch.setattr(test_conversion, "convert", convert_to_plain)


@pytest.mark.skipif(not test_conversion.FIXTURES.is_dir(), reason="parity fixtures not found")
@pytest.mark.parametrize(
    ("test", "arguments"),
    [
        ("test_kinetics_sounds_backbone_parity", {"checkpoint": "finetuned_checkpoint.pyth"}),
        ("test_kinetics_sounds_backbone_parity", {"checkpoint": "pretrained_checkpoint.pyth"}),
        ("test_kinetics_sounds_head_parity", {}),
        ("test_ucf101_parity", {}),
        ("test_esc50_linear_eval_parity", {}),
    ],
)
def test_parity_on_the_plain_path(plain_conversion, test, arguments):
    test_function = getattr(test_conversion, test)
    if "ks_tensors" in test_function.__code__.co_varnames[: test_function.__code__.co_argcount]:
        folder = test_conversion.FIXTURES / "tiny_ks"
        arguments = {
            **arguments,
            "ks_tensors": (load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")),
        }
    test_function(**arguments)


@pytest.mark.parametrize("training", [False, True])
def test_fast_path_compiles_in_one_graph(make_config, make_inputs, labels, training):
    """Dynamo only (backend="eager"): the folded eval forward and the training forward trace without graph breaks."""
    model = build(AVBertForVideoClassification, make_config(**NO_DROPOUT, cnn_channels_last_training=True))
    model.train(training)
    inputs = make_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        expected = copy.deepcopy(model)(**inputs, labels=labels)
        actual = compiled(**inputs, labels=labels)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not test_conversion.FIXTURES.is_dir(), reason="parity fixtures not found")
def test_pipeline_runs_the_fast_path_with_no_flag(tmp_path):
    """`pipeline(...)` loads a saved folder and runs the folded forward as it is; the switch gives the plain scores."""
    tiny = test_conversion.FIXTURES / "tiny_audio"
    convert_checkpoint(tiny / "finetuned_checkpoint.pyth", tmp_path, "esc50", tiny / "config.yaml")
    classifier = pipeline("audio-classification", model=str(tmp_path))
    norms = [m for m in classifier.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    calls = []
    for norm in norms:
        norm.register_forward_hook(lambda *args: calls.append(1))
    seconds = torch.arange(5 * classifier.feature_extractor.sampling_rate) / classifier.feature_extractor.sampling_rate
    waveform = (0.1 * torch.sin(2 * torch.pi * 440 * seconds)).numpy()
    fast = classifier(waveform, top_k=3)
    assert not calls and norms
    classifier.model.config.cnn_fast_inference = False
    plain = classifier(waveform, top_k=3)
    assert calls
    assert [p["label"] for p in fast] == [p["label"] for p in plain]
    for a, b in zip(fast, plain, strict=True):
        assert abs(a["score"] - b["score"]) < 1e-5
