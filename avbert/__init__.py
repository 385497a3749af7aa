"""AVBERT for HuggingFace Transformers. Importing the package registers the family with the Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForAudioClassification, AutoModelForVideoClassification

from .configuration_avbert import AVBertConfig
from .modeling_avbert import (
    AVBertClassifierOutput,
    AVBertForAudioClassification,
    AVBertForVideoClassification,
    AVBertModel,
    AVBertModelOutput,
    AVBertPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(AVBertConfig.model_type, AVBertConfig)
AutoModel.register(AVBertConfig, AVBertModel)
AutoModelForVideoClassification.register(AVBertConfig, AVBertForVideoClassification)
AutoModelForAudioClassification.register(AVBertConfig, AVBertForAudioClassification)

# `save_pretrained` then writes an `auto_map` and copies the code, so a saved folder also loads with
# `trust_remote_code=True` where this package is not installed.
AVBertConfig.register_for_auto_class()
AVBertModel.register_for_auto_class("AutoModel")
AVBertForVideoClassification.register_for_auto_class("AutoModelForVideoClassification")
AVBertForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")

__all__ = [
    "AVBertClassifierOutput",
    "AVBertConfig",
    "AVBertForAudioClassification",
    "AVBertForVideoClassification",
    "AVBertModel",
    "AVBertModelOutput",
    "AVBertPreTrainedModel",
]
