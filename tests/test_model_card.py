"""The model card (README.md) written with every saved and every converted AVBERT folder."""

import os
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIG

from avbert import AVBertConfig, AVBertForAudioClassification, AVBertForPreTraining, AVBertForVideoClassification
from avbert.convert_original_checkpoint import convert_checkpoint
from avbert.model_card import GENERATED_MARKER

SHARED = Path(os.environ.get("AVBERT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "fixtures" / "original"


def front_matter(card: str) -> dict[str, str]:
    header = card.split("---")[1]
    return dict(line.split(": ", 1) for line in header.strip().splitlines() if ": " in line)


@pytest.mark.parametrize(
    "model_class, overrides, task",
    [
        (AVBertForVideoClassification, {}, "video-classification"),
        (AVBertForAudioClassification, {"use_visual": False, "use_transformer": False}, "audio-classification"),
        (AVBertForPreTraining, {}, "feature-extraction"),
    ],
    ids=["video", "audio", "pretraining"],
)
def test_save_pretrained_writes_a_model_card(tmp_path, model_class, overrides, task):
    config = AVBertConfig(**{**TINY_CONFIG, **overrides}, id2label={i: f"class_{i}" for i in range(5)})
    torch.manual_seed(0)
    model_class(config).save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == task and meta["license"] == "apache-2.0"
    for section in ("## Task", "## Inputs", "## How to use", "## Provenance", "## Licence"):
        assert section in card
    assert f"`pixel_values`: `(batch, num_clips, 3, {TINY_CONFIG['num_frames']}" in card or not config.use_visual
    if task != "feature-extraction":
        assert "5 labels: `class_0`, `class_1`" in card
    assert "not converted" in card


def test_a_users_readme_is_kept(tmp_path):
    (tmp_path / "README.md").write_text("my own card")
    AVBertForVideoClassification(AVBertConfig(**TINY_CONFIG)).save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my own card"


def test_an_avbert_card_is_rewritten_on_save(tmp_path):
    model = AVBertForVideoClassification(AVBertConfig(**TINY_CONFIG))
    model.save_pretrained(tmp_path)
    model.config.id2label = {i: f"renamed_{i}" for i in range(5)}
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert GENERATED_MARKER in card and "`renamed_0`" in card


@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"parity fixtures not found at {FIXTURES}")
def test_converted_folder_card_states_its_provenance_and_parity(tmp_path):
    fixture = FIXTURES / "tiny_ks"
    convert_checkpoint(
        fixture / "finetuned_checkpoint.pyth", tmp_path, "kinetics-sounds", original_config_path=fixture / "config.yaml"
    )
    card = (tmp_path / "README.md").read_text()
    assert front_matter(card)["license"] == "unknown"
    assert "Converted by `avbert-convert --task kinetics-sounds`" in card
    assert "`finetuned_checkpoint.pyth`" in card and "fine-tuned" in card
    assert "cached `_B`" in card  # the parity figure the converter measured
