"""The CNNs' fast paths (BatchNorm folding, channels-last) and their activation checkpointing."""

import copy

import pytest
import test_conversion
import torch
from conftest import NO_DROPOUT
from safetensors.torch import load_file

from avbert import AVBertForAudioClassification, AVBertForVideoClassification
from avbert.modeling_avbert import AVBertBottleneck2d, AVBertBottleneck3d, AVBertCNNFastPath


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


def test_fuse_for_inference_gives_the_same_outputs_and_is_reversible(make_config, make_inputs):
    model = randomize_batch_norms(build(AVBertForVideoClassification, make_config(**NO_DROPOUT))).eval()
    inputs = make_inputs()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        plain = model(**inputs)
        fused = model.fuse_for_inference()(**inputs)
        visual_map = model.avbert.visual_encoder(inputs["pixel_values"].flatten(0, 1))
        audio_map = model.avbert.audio_encoder(inputs["input_features"].flatten(0, 1))
    assert visual_map.is_contiguous(memory_format=torch.channels_last_3d)
    assert audio_map.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fused.clip_logits, plain.clip_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.logits, plain.logits, rtol=1e-4, atol=1e-5)
    # Nothing is stored: the state dict is the same, so a fused model saves and loads as before.
    assert all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())

    with torch.no_grad():
        unfused = model.fuse_for_inference(False)(**inputs)
    torch.testing.assert_close(unfused.logits, plain.logits, rtol=0, atol=0)
    assert not any(m.fold_batch_norm or m.channels_last for m in model.modules() if isinstance(m, AVBertCNNFastPath))


def test_folding_follows_later_weight_changes(make_config, make_inputs):
    model = build(AVBertForVideoClassification, make_config(**NO_DROPOUT)).fuse_for_inference().eval()
    inputs = make_inputs()
    randomize_batch_norms(model, seed=1)  # after fusing: a folded copy would now be stale
    with torch.no_grad():
        fused = model(**inputs).logits
        plain = model.fuse_for_inference(False)(**inputs).logits
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)


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
    """In training BatchNorm is never folded (it needs batch statistics); channels-last gives the same gradients."""
    model = randomize_batch_norms(build(AVBertForVideoClassification, make_config(**NO_DROPOUT))).train()
    fast = copy.deepcopy(model).fuse_for_inference()
    inputs = make_inputs()
    model(**inputs, labels=labels).loss.backward()
    fast(**inputs, labels=labels).loss.backward()
    assert_same_training_state(fast, model, gradient_tolerance=1e-4, buffer_tolerance=1e-5)


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("model_class", [AVBertForAudioClassification, AVBertForVideoClassification])
def test_cnn_checkpointing_matches_and_updates_running_statistics_once(
    make_config, make_inputs, labels, use_reentrant, model_class, fast
):
    """The audio classifier has no transformer layer: its checkpointable layers are the CNN blocks and stem.
    On the fast path the stems' channels-last input copies are made inside the checkpoint."""
    config = make_config(use_visual=model_class is AVBertForVideoClassification, use_transformer=False, **NO_DROPOUT)
    model = randomize_batch_norms(build(model_class, config)).train().fuse_for_inference(fast)
    checkpointed = copy.deepcopy(model)
    checkpointed.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    assert checkpointed.is_activation_checkpointing
    blocks = [m for m in checkpointed.modules() if isinstance(m, AVBertBottleneck2d)]
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
    blocks = [m for m in model.modules() if isinstance(m, AVBertBottleneck3d)]
    assert blocks and all(block.gradient_checkpointing for block in blocks)
    assert model.avbert.visual_encoder.gradient_checkpointing  # the stem
    model.activation_checkpointing_disable()
    assert not any(module.gradient_checkpointing for module in [*blocks, model.avbert.visual_encoder])


# The parity tests of test_conversion.py, rerun unchanged on the fast path: same fixtures, same tolerances.


@pytest.fixture
def fast_conversion(monkeypatch):
    convert = test_conversion.convert
    monkeypatch.setattr(
        test_conversion, "convert", lambda *args, **kwargs: convert(*args, **kwargs).fuse_for_inference()
    )


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
def test_parity_on_the_fast_path(fast_conversion, test, arguments):
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
    model = build(AVBertForVideoClassification, make_config(**NO_DROPOUT)).fuse_for_inference().train(training)
    inputs = make_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        expected = copy.deepcopy(model)(**inputs, labels=labels)
        actual = compiled(**inputs, labels=labels)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=1e-4, atol=1e-5)
