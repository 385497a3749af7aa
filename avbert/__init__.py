"""AVBERT for HuggingFace Transformers. Importing the package registers the family with the Auto classes."""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForPreTraining,
    AutoModelForVideoClassification,
    AutoProcessor,
    AutoVideoProcessor,
)

from .configuration_avbert import AVBertConfig
from .feature_extraction_avbert import AVBertFeatureExtractor
from .media_decoding import MediaDecodeError
from .modeling_avbert import (
    AVBertClassifierOutput,
    AVBertForAudioClassification,
    AVBertForPreTraining,
    AVBertForVideoClassification,
    AVBertModel,
    AVBertModelOutput,
    AVBertPreTrainedModel,
)
from .processing_avbert import AVBertProcessor
from .video_processing_avbert import AVBertVideoProcessor

__version__ = "0.1.0"

AutoConfig.register(AVBertConfig.model_type, AVBertConfig)
AutoModel.register(AVBertConfig, AVBertModel)
AutoModelForVideoClassification.register(AVBertConfig, AVBertForVideoClassification)
AutoModelForAudioClassification.register(AVBertConfig, AVBertForAudioClassification)
AutoModelForPreTraining.register(AVBertConfig, AVBertForPreTraining)
AutoFeatureExtractor.register(AVBertConfig, AVBertFeatureExtractor)
AutoVideoProcessor.register(AVBertConfig, AVBertVideoProcessor)
AutoProcessor.register(AVBertConfig, AVBertProcessor)

# `save_pretrained` then writes an `auto_map` and copies the code, so a saved folder also loads with
# `trust_remote_code=True` where this package is not installed.
AVBertConfig.register_for_auto_class()
AVBertModel.register_for_auto_class("AutoModel")
AVBertForVideoClassification.register_for_auto_class("AutoModelForVideoClassification")
AVBertForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
AVBertForPreTraining.register_for_auto_class("AutoModelForPreTraining")
AVBertFeatureExtractor.register_for_auto_class()
AVBertVideoProcessor.register_for_auto_class()
AVBertProcessor.register_for_auto_class()

__all__ = [
    "AVBertClassifierOutput",
    "AVBertConfig",
    "AVBertFeatureExtractor",
    "AVBertForAudioClassification",
    "AVBertForPreTraining",
    "AVBertForVideoClassification",
    "AVBertModel",
    "AVBertModelOutput",
    "AVBertPreTrainedModel",
    "AVBertProcessor",
    "AVBertVideoProcessor",
    "MediaDecodeError",
]
