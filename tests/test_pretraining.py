"""AVBertForPreTraining: losses and gradients, masking and negative-sampling statistics, loading into classifiers."""

import pytest
import torch

from avbert import (
    AVBertConfig,
    AVBertForAudioClassification,
    AVBertForPreTraining,
    AVBertForVideoClassification,
    modeling_avbert,
)
from avbert.modeling_avbert import (
    negative_sampling_probabilities,
    sample_clip_mask,
    sample_negatives,
    sample_pair_labels,
)

CLIPS = 6
TINY = {
    "visual_base_width": 4,
    "visual_depths": [1, 1],
    "visual_temporal_kernel_sizes": [1, 3],
    "audio_base_width": 4,
    "audio_depths": [1, 1],
    "audio_num_separable_stages": 1,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "orthogonal_size": 8,
    "max_position_embeddings": 2 * (CLIPS + 1),
    "num_clips": CLIPS,
    "num_frames": 4,
    "num_mel_bins": 16,
    "audio_num_frames": 16,
    "num_negatives": 4,
}


def inputs(batch: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(batch, CLIPS, 3, 4, 16, 16, generator=generator),
        "input_features": torch.randn(batch, CLIPS, 1, 16, 16, generator=generator),
    }


@pytest.mark.parametrize("strategy", ["cans", "random", "easy", "hard"])
def test_losses_are_finite_and_every_parameter_learns(strategy):
    torch.manual_seed(0)
    model = AVBertForPreTraining(AVBertConfig(**TINY, negative_sampling=strategy))
    output = model(**inputs())
    for name in ("loss", "visual_mep_loss", "audio_mep_loss", "multimodal_mep_loss", "pair_loss"):
        assert torch.isfinite(output[name]), name
    output.loss.backward()
    no_gradient = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert not no_gradient, no_gradient


def test_every_objective_can_fit_a_fixed_batch():
    """The objectives are learnable: a few optimizer steps on one batch with fixed masks, pair labels and negatives
    lower each of them (a broken target, mask or swap would leave some at chance). Random negatives: their draws
    use the same random numbers at every step, whereas content-aware ones change as the embeddings do."""
    torch.manual_seed(0)
    model = AVBertForPreTraining(
        AVBertConfig(**TINY, negative_sampling="random", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    )
    batch = {
        **inputs(batch=4),
        "visual_mask": sample_clip_mask(4, CLIPS, 0.34, generator=torch.Generator().manual_seed(1)),
        "audio_mask": sample_clip_mask(4, CLIPS, 0.34, generator=torch.Generator().manual_seed(2)),
        "pair_labels": torch.tensor([1, 0, 1, 0]),
    }
    names = ("visual_mep_loss", "audio_mep_loss", "multimodal_mep_loss", "pair_loss")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        torch.manual_seed(3)  # the same negatives at every step
        output = model(**batch)
        first = first or {name: float(output[name].detach()) for name in names}
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    torch.manual_seed(3)
    with torch.no_grad():  # still in train mode: the BatchNorms normalize with the batch, as during the steps
        last = {name: float(model(**batch)[name]) for name in names}
    for name in names:
        assert last[name] < 0.75 * first[name], (name, first[name], last[name])


def test_targets_are_the_linear_projection_before_its_layer_norm(monkeypatch):
    """MEP scores predictions against `W_I x_t` (the projection's linear map), not the LayerNorm-ed tokens the
    transformer reads: with those, a part common to all targets does not cancel in the softmax (docs/pretraining.md)."""
    torch.manual_seed(0)
    model = AVBertForPreTraining(AVBertConfig(**TINY)).eval()
    seen_targets = []
    loss = modeling_avbert.masked_embedding_loss

    def recording_loss(predictions, targets, *args):
        seen_targets.append(targets)
        return loss(predictions, targets, *args)

    monkeypatch.setattr(modeling_avbert, "masked_embedding_loss", recording_loss)
    batch = inputs()
    with torch.no_grad():
        model(**batch, pair_labels=torch.ones(3, dtype=torch.long))
        visual, audio = model.avbert.get_clip_features(batch["pixel_values"], batch["input_features"])
    # Calls: visual stage, audio stage, multimodal stage (visual, then audio clips).
    expected = [model.avbert.visual_projection.dense(visual), model.avbert.audio_projection.dense(audio)]
    for targets, wanted in zip(seen_targets, expected + expected, strict=True):
        torch.testing.assert_close(targets, wanted.flatten(0, 1))


def test_pair_labels_swap_the_sound_tracks():
    torch.manual_seed(0)
    model = AVBertForPreTraining(AVBertConfig(**TINY)).eval()
    batch = inputs()
    masks = {
        "visual_mask": torch.zeros(3, CLIPS, dtype=torch.bool),
        "audio_mask": torch.zeros(3, CLIPS, dtype=torch.bool),
    }
    masks["visual_mask"][:, 0] = masks["audio_mask"][:, 0] = True
    with torch.no_grad():
        matched = model(**batch, **masks, pair_labels=torch.tensor([1, 1, 1]))
        swapped = model(**batch, **masks, pair_labels=torch.tensor([1, 0, 1]))
        # Swapping video 1's sound for video 2's is the same as giving video 1 video 2's input features.
        batch_by_hand = {**batch, "input_features": batch["input_features"][[0, 2, 2]]}
        by_hand = model(**batch_by_hand, **masks, pair_labels=torch.tensor([1, 1, 1]))
    assert torch.equal(swapped.pair_labels, torch.tensor([1, 0, 1]))
    assert not torch.allclose(matched.pair_logits[1], swapped.pair_logits[1])
    torch.testing.assert_close(swapped.pair_logits, by_hand.pair_logits)


def test_pair_negative_ratio_is_respected():
    labels = sample_pair_labels(20000, 0.3, generator=torch.Generator().manual_seed(0))
    assert abs((1 - labels.float().mean().item()) - 0.3) < 0.013  # ~4 standard deviations
    assert sample_pair_labels(1, 1.0).tolist() == [1]  # nothing to swap with


@pytest.mark.parametrize("ratio, expected", [(0.15, 1), (0.5, 3), (0.34, 2)])
def test_mask_ratio_and_uniform_positions(ratio, expected):
    generator = torch.Generator().manual_seed(0)
    mask = sample_clip_mask(4000, CLIPS, ratio, generator=generator)
    assert (mask.sum(dim=1) == expected).all()
    frequency = mask.float().mean(dim=0)
    torch.testing.assert_close(frequency, torch.full((CLIPS,), expected / CLIPS), atol=0.03, rtol=0)


def test_cans_probabilities_follow_similarity():
    # Anchor 0; candidates ever farther away: the nearer, the likelier (cans), the opposite for easy.
    embeddings = torch.stack([torch.linspace(0, 3.0, 12), torch.zeros(12)], dim=1)
    anchors = torch.tensor([0])
    cans = negative_sampling_probabilities(embeddings, anchors, "cans", outlier_quantile=0.0)[0]
    easy = negative_sampling_probabilities(embeddings, anchors, "easy", outlier_quantile=0.0)[0]
    uniform = negative_sampling_probabilities(embeddings, anchors, "random", outlier_quantile=0.0)[0]
    assert cans[0] == easy[0] == uniform[0] == 0  # never the anchor itself
    assert (cans[1:].diff() <= 1e-7).all() and (easy[1:].diff() >= -1e-7).all()
    torch.testing.assert_close(uniform[1:], torch.full((11,), 1 / 11))
    # L2 distances rescaled to [0, 1]: the nearest candidate has weight 1 - 0, the farthest 0 (cans).
    distance = (embeddings - embeddings[0]).norm(dim=1)[1:]
    rescaled = (distance - distance.min()) / (distance.max() - distance.min())
    torch.testing.assert_close(cans[1:], (1 - rescaled) / (1 - rescaled).sum())
    torch.testing.assert_close(easy[1:], rescaled / rescaled.sum())


@pytest.mark.parametrize("strategy", ["cans", "easy"])
def test_outliers_are_dropped_before_rescaling(strategy):
    embeddings = torch.randn(41, 8, generator=torch.Generator().manual_seed(1))
    anchors = torch.tensor([0])
    weights = negative_sampling_probabilities(embeddings, anchors, strategy, outlier_quantile=0.1)[0]
    distance = (embeddings[1:] - embeddings[0]).norm(dim=1)
    low, high = distance.quantile(0.1), distance.quantile(0.9)
    kept = (distance >= low) & (distance <= high)
    rescaled = (distance - low) / (high - low)
    expected = torch.where(kept, 1 - rescaled if strategy == "cans" else rescaled, torch.zeros(()))
    torch.testing.assert_close(weights[1:], expected / expected.sum())
    assert weights[0] == 0
    # The nearest and the farthest 10% (4 of 40 each) are never drawn: near-duplicates and far-off clips are dropped.
    order = distance.argsort()
    assert (weights[1:][order[:4]] == 0).all() and (weights[1:][order[-4:]] == 0).all()
    assert (weights[1:][order[4:-4]] > 0).sum() >= 31


@pytest.mark.parametrize("strategy", ["cans", "easy", "random"])
def test_sampled_negatives_match_their_distribution(strategy):
    embeddings = torch.randn(10, 4, generator=torch.Generator().manual_seed(2))
    anchors = torch.zeros(20000, dtype=torch.long)
    probabilities = negative_sampling_probabilities(embeddings, anchors[:1], strategy, outlier_quantile=0.0)[0]
    draws = sample_negatives(embeddings, anchors, 1, strategy, 0.0, generator=torch.Generator().manual_seed(3))
    frequency = torch.bincount(draws.flatten(), minlength=10).float() / draws.numel()
    assert frequency[0] == 0
    torch.testing.assert_close(frequency, probabilities, atol=0.012, rtol=0)  # ~4 sigma at 20k draws


def test_hard_negatives_are_the_most_similar():
    embeddings = torch.randn(10, 4, generator=torch.Generator().manual_seed(4))
    negatives = sample_negatives(embeddings, torch.tensor([3]), 3, "hard", 0.0)[0]
    distance = (embeddings - embeddings[3]).norm(dim=1)
    distance[3] = float("inf")
    assert set(negatives.tolist()) == set(distance.topk(3, largest=False).indices.tolist())


def test_pretrained_checkpoint_loads_into_both_classifiers_with_new_heads_only(tmp_path):
    torch.manual_seed(0)
    pretrained = AVBertForPreTraining(AVBertConfig(**TINY))
    pretrained.save_pretrained(tmp_path)
    video, info = AVBertForVideoClassification.from_pretrained(tmp_path, num_labels=5, output_loading_info=True)
    assert info["missing_keys"] and all(
        key.startswith(("clip_head.", "sequence_head.")) for key in info["missing_keys"]
    )
    audio, info = AVBertForAudioClassification.from_pretrained(tmp_path, num_labels=5, output_loading_info=True)
    assert info["missing_keys"] and all(key.startswith("clip_head.") for key in info["missing_keys"])
    source = pretrained.avbert.state_dict()
    for name, tensor in video.avbert.state_dict().items():
        assert torch.equal(tensor, source[name]), name
    for name, tensor in audio.avbert.state_dict().items():
        assert torch.equal(tensor, source[name]), name


def test_refuses_configurations_without_both_modalities():
    with pytest.raises(ValueError, match="needs both modalities"):
        AVBertForPreTraining(AVBertConfig(**TINY, use_audio=False))
    with pytest.raises(ValueError, match="mask_ratio"):
        AVBertConfig(**TINY, mask_ratio=0.0)
    with pytest.raises(ValueError, match="negative_sampling"):
        AVBertConfig(**TINY, negative_sampling="semi-hard")


def test_outputs_hidden_states_attentions_and_integer_masks():
    torch.manual_seed(0)
    model = AVBertForPreTraining(AVBertConfig(**TINY, attn_implementation="eager")).eval()
    with torch.no_grad():
        output = model(**inputs(), output_hidden_states=True, output_attentions=True)
        again = model(**inputs())
    layers = model.config.num_hidden_layers
    assert len(output.hidden_states) == layers + 1 and len(output.attentions) == layers
    assert output.hidden_states[-1].shape == (3, 2 * (CLIPS + 1), model.config.hidden_size)  # the multimodal stage
    assert output.visual_mask.dtype == output.audio_mask.dtype == torch.long
    assert set(output.visual_mask.unique().tolist()) <= {0, 1}
    # Eval mode draws masks, pair labels and negatives from a freshly seeded generator: the loss is reproducible.
    assert torch.equal(again.loss, output.loss) and torch.equal(again.visual_mask, output.visual_mask)
    assert again.hidden_states is None
