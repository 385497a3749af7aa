"""transformers' own `ConfigTester` (v5.24) over `AVBertConfig`, and the configuration's validation: every impossible
value is refused with a ValueError that names the field, while saved folders with undeclared keys still load."""

import json
import unittest

import pytest
from conftest import TINY_CONFIG
from transformers_common import ConfigTester

from avbert import AVBertConfig, AVBertForVideoClassification


class AVBertConfigTest(unittest.TestCase):
    def setUp(self):
        # `num_labels` is no field (config.json stores `id2label`); the tester checks it with its own value.
        fields = {key: value for key, value in TINY_CONFIG.items() if key != "num_labels"}
        self.config_tester = ConfigTester(self, config_class=AVBertConfig, has_text_modality=False, **fields)

    def test_config(self):
        self.config_tester.run_common_tests()


INVALID_VALUES = {
    "num_hidden_layers": -1,
    "num_frames": 0,
    "num_mel_bins": 0,
    "audio_num_frames": -2,
    "num_channels": 0,
    "num_labels": 0,
    "batch_norm_momentum": 1.5,
    "batch_norm_eps": 0.0,
    "orthogonal_size": 64,  # > hidden_size 32
    "hidden_size": 0,
    "num_attention_heads": 0,
    "intermediate_size": -1,
    "max_position_embeddings": 0,
    "type_vocab_size": 1,  # the multimodal stage has two token types
    "hidden_act": "nope",
    "layer_norm_eps": -1e-12,
    "head_layer_norm_eps": -1.0,
    "hidden_dropout_prob": 1.5,
    "classifier_dropout": -0.1,
}


@pytest.mark.parametrize("field, value", INVALID_VALUES.items(), ids=INVALID_VALUES.keys())
def test_invalid_value_raises_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must "):
        AVBertConfig(**{**TINY_CONFIG, field: value})


def test_negative_momentum_raises():
    with pytest.raises(ValueError, match=r"batch_norm_momentum must be in \[0, 1\], got -0.1"):
        AVBertConfig(**TINY_CONFIG, batch_norm_momentum=-0.1)


def test_saved_folder_with_undeclared_keys_still_validates_and_loads(tmp_path):
    AVBertForVideoClassification(AVBertConfig(**TINY_CONFIG)).save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "added_by_a_tool": [1, 2]}))
    model = AVBertForVideoClassification.from_pretrained(tmp_path)
    assert model.config.added_by_a_tool == [1, 2]
    broken = {**json.loads(config_file.read_text()), "num_frames": 0}
    config_file.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="num_frames must be positive"):
        AVBertConfig.from_pretrained(tmp_path)
