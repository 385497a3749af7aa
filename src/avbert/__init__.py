"""AVBERT for HuggingFace Transformers. Importing the package registers the family with the Auto classes.

The import is light: the classes load on first use, as transformers' own models do (`_LazyModule`), and each Auto
class registration runs when its transformers Auto module or the avbert module that defines its classes is imported
(`_import_hooks`), so `import avbert; AutoModel.from_pretrained(folder)`,
`AutoProcessor.from_pretrained(folder)` and `pipeline("video-classification", model=folder)` work as before.
`save_pretrained` then writes an `auto_map` and copies the code (`register_for_auto_class`), so a saved folder also
loads with `trust_remote_code=True` where this package is not installed.
"""

import importlib

from ._import_hooks import post_import_hooks

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY_ATTRIBUTES = {
    "AVBertConfig": "configuration_avbert",
    "AVBertClassifierOutput": "modeling_avbert",
    "AVBertForAudioClassification": "modeling_avbert",
    "AVBertForPreTraining": "modeling_avbert",
    "AVBertForVideoClassification": "modeling_avbert",
    "AVBertModel": "modeling_avbert",
    "AVBertModelOutput": "modeling_avbert",
    "AVBertPreTrainedModel": "modeling_avbert",
    "AVBertFeatureExtractor": "feature_extraction_avbert",
    "AVBertProcessor": "processing_avbert",
    "AVBertVideoProcessor": "video_processing_avbert",
    "MediaDecodeError": "media_decoding",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_ATTRIBUTES})


def _register_config() -> None:
    from transformers import AutoConfig

    from .configuration_avbert import AVBertConfig

    AutoConfig.register(AVBertConfig.model_type, AVBertConfig)
    AVBertConfig.register_for_auto_class()


def _register_models() -> None:
    from transformers import (
        AutoModel,
        AutoModelForAudioClassification,
        AutoModelForPreTraining,
        AutoModelForVideoClassification,
    )

    from .configuration_avbert import AVBertConfig
    from .modeling_avbert import (
        AVBertForAudioClassification,
        AVBertForPreTraining,
        AVBertForVideoClassification,
        AVBertModel,
    )

    for auto_class, model_class in (
        (AutoModel, AVBertModel),
        (AutoModelForVideoClassification, AVBertForVideoClassification),
        (AutoModelForAudioClassification, AVBertForAudioClassification),
        (AutoModelForPreTraining, AVBertForPreTraining),
    ):
        auto_class.register(AVBertConfig, model_class)
        model_class.register_for_auto_class(auto_class.__name__)


def _register_feature_extractor() -> None:
    from transformers import AutoFeatureExtractor

    from .configuration_avbert import AVBertConfig
    from .feature_extraction_avbert import AVBertFeatureExtractor

    AutoFeatureExtractor.register(AVBertConfig, AVBertFeatureExtractor)
    AVBertFeatureExtractor.register_for_auto_class()


def _register_video_processor() -> None:
    from transformers import AutoVideoProcessor

    from .configuration_avbert import AVBertConfig
    from .video_processing_avbert import AVBertVideoProcessor

    AutoVideoProcessor.register(AVBertConfig, AVBertVideoProcessor)
    AVBertVideoProcessor.register_for_auto_class()


def _register_processor() -> None:
    from transformers import AutoProcessor

    from .configuration_avbert import AVBertConfig
    from .processing_avbert import AVBertProcessor

    AutoProcessor.register(AVBertConfig, AVBertProcessor)
    AVBertProcessor.register_for_auto_class()


for _auto_module, _avbert_module, _register in (
    ("configuration_auto", "configuration_avbert", _register_config),
    ("modeling_auto", "modeling_avbert", _register_models),
    ("feature_extraction_auto", "feature_extraction_avbert", _register_feature_extractor),
    ("video_processing_auto", "video_processing_avbert", _register_video_processor),
    ("processing_auto", "processing_avbert", _register_processor),
):
    post_import_hooks.when_imported(
        (f"transformers.models.auto.{_auto_module}", f"{__name__}.{_avbert_module}"), _register
    )

__all__ = list(_LAZY_ATTRIBUTES)
