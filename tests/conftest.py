"""Shared tiny configurations and inputs for the AVBERT model tests."""

import pytest
import torch

from avbert import AVBertConfig

BATCH_SIZE = 2
NUM_CLIPS = 3
NUM_FRAMES = 4
IMAGE_SIZE = 16
NUM_MEL_BINS = 16
AUDIO_NUM_FRAMES = 16
NUM_LABELS = 5

# Two-stage CNNs (a projection-shortcut block, then a stage with an identity-shortcut block; one separable and one
# plain audio stage) under a 2-layer, 4-head transformer with a rank-8 factorization. `initializer_range=0.5` instead
# of the original 0.01: at 0.01 the tiny transformer's attention is uniform to 1e-4 and every logit is about
# log(1 / num_labels), so equivalence tests (eager vs sdpa, save/load, bf16, compile) would pass trivially.
TINY_CONFIG = {
    "num_clips": NUM_CLIPS,
    "num_frames": NUM_FRAMES,
    "num_labels": NUM_LABELS,
    "visual_base_width": 4,
    "visual_depths": [1, 2],
    "visual_temporal_kernel_sizes": [1, 3],
    "num_mel_bins": NUM_MEL_BINS,
    "audio_num_frames": AUDIO_NUM_FRAMES,
    "audio_base_width": 4,
    "audio_depths": [1, 2],
    "audio_num_separable_stages": 1,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "orthogonal_size": 8,
    "max_position_embeddings": 8,
    "initializer_range": 0.5,
}

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}


@pytest.fixture
def make_config():
    """`make_config(**overrides)` -> a tiny `AVBertConfig`."""

    def _make_config(**overrides):
        return AVBertConfig(**{**TINY_CONFIG, **overrides})

    return _make_config


@pytest.fixture
def make_inputs():
    """`make_inputs(batch_size=2, num_clips=3, video=True, audio=True, seed=0)` -> a dict of model inputs."""

    def _make_inputs(batch_size=BATCH_SIZE, num_clips=NUM_CLIPS, video=True, audio=True, seed=0):
        generator = torch.Generator().manual_seed(seed)
        inputs = {}
        if video:
            inputs["pixel_values"] = torch.randn(
                batch_size, num_clips, 3, NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, generator=generator
            )
        if audio:
            inputs["input_features"] = torch.randn(
                batch_size, num_clips, 1, NUM_MEL_BINS, AUDIO_NUM_FRAMES, generator=generator
            )
        return inputs

    return _make_inputs
