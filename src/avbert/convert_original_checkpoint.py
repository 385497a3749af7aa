"""
Convert a checkpoint of the original AVBERT code (sangho-vision/avbert, a PySlowFast fork) into a folder that
`AutoModelForVideoClassification` / `AutoModelForAudioClassification` load.

Both original layouts are read: the released pretrained checkpoint (`{"state_dict": ...}`, keys prefixed `avbert.`,
no task heads) and the fine-tuned checkpoints the original training loop saves (`{"model_state_dict": ...,
"head_state_dict": ..., ...}`). The stale `_B` caches of the orthogonal matrices are dropped (after checking that they
agree with the matrices derived from `A` and `base`), the four aliases of the one shared transformer are
de-duplicated, and any key the converter does not understand is refused.

    avbert-convert checkpoint.pyth OUTPUT_DIR --task kinetics-sounds [--original-config config.yaml]
"""

from __future__ import annotations

import argparse
import ast
import copy
import logging
import re
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from .configuration_avbert import AVBertConfig
from .model_card import converted_provenance, write_model_card

if TYPE_CHECKING:  # the model and processing modules take seconds to import: not for `--help`
    from .feature_extraction_avbert import AVBertFeatureExtractor
    from .modeling_avbert import AVBertForAudioClassification, AVBertForVideoClassification
    from .processing_avbert import AVBertProcessor

logger = logging.getLogger(__name__)

TASKS = ("kinetics-sounds", "ucf101", "esc50")
_ORIGINAL_TASK_NAMES = {
    "MultimodalSequenceClassify": "kinetics-sounds",
    "VisualClassify": "ucf101",
    "AudioClassify": "esc50",
}
_RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_TRANSFORMER_ALIASES = ("single_visual_transformer.", "single_audio_transformer.", "multi_transformer.")
_SHARED_LAYER_PREFIX = "transformer.encoder.albert_layer_groups.0.albert_layers.0."
# A cached `_B` may differ from the float64 matrix exponential by ~1e-6 (float32 Pade port); a wrong mapping of the
# generator (transposed, or the full matrix instead of its upper triangle) is off by O(1).
_ROTATION_SELF_CHECK_ATOL = 1e-4


class ConversionError(ValueError):
    """The checkpoint or its configuration cannot be converted faithfully."""


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


def default_config_kwargs(task: str) -> dict[str, Any]:
    """The released architecture of each task (the original's yaml files)."""
    if task == "kinetics-sounds":
        return {"num_labels": 32}
    if task == "ucf101":
        return {"use_audio": False, "use_transformer": False, "num_labels": 101}
    return {
        "use_visual": False,
        "use_transformer": False,
        "num_labels": 50,
        "classifier_dropout": 0.1,
        "classifier_loss": "multi_margin",
        "freeze_encoder": True,
    }


# The defaults of the original's yacs `config.py` for every key read here (spec section 0 and the layout tables). The
# repository's `configs/*/config.yaml` set only what differs from them, and yacs types each value by its default.
ORIGINAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "MODEL": {
        "TASK": "VisualClassify",
        "NUM_CLASSES": 101,
        "DROPOUT_RATE": 0.5,
        "EPSILON": 1e-5,
        "MOMENTUM": 0.1,
        "LOSS_FUNC": "cross_entropy",
        "MARGIN": 0.1,
        "FC_INIT_STD": 0.01,
        "ZERO_INIT_FINAL_BN": True,
        "FUSION": "mid",
    },
    "SOLVER": {"PROTOCOL": "finetune"},
    "DATA": {
        "NUM_FRAMES": 32,
        "SAMPLING_RATE": 2,
        "TARGET_FPS": 30,
        "CROP_SIZE": 112,
        "TRAIN_CROP_SIZE": 112,
        "TRAIN_JITTER_SCALES": [128, 160],
        "TEST_CROP_SIZE": 128,
        "MEAN": [0.45, 0.45, 0.45],
        "STD": [0.225, 0.225, 0.225],
        "TARGET_AUDIO_RATE": 44100,
        "AUDIO_FREQUENCY": 80,
        "AUDIO_TIME": 128,
        "CLIP_DURATION": 2,
        "SEQUENCE_LENGTH": 10,
    },
    "TEST": {"NUM_SAMPLES": 30, "NUM_SPATIAL_CROPS": 3},
    "RESNET": {
        "DEPTH": 50,
        "TRANS_FUNC": "bottleneck_transform",
        "NUM_GROUPS": 1,
        "WIDTH_PER_GROUP": 64,
        "STRIDE_1X1": False,
        "NUM_BLOCK_TEMP_KERNEL": [[3], [4], [6], [3]],
        "SPATIAL_STRIDES": [[1], [2], [2], [2]],
        "SPATIAL_DILATIONS": [[1], [1], [1], [1]],
    },
    "AUDIO_RESNET": {
        "DEPTH": 50,
        "TRANS_FUNC": "bottleneck_transform",
        "NUM_GROUPS": 1,
        "WIDTH_PER_GROUP": 32,
        "STRIDE_1X1": False,
        "STRIDES": [2, 2, 2, 2],
        "DILATIONS": [1, 1, 1, 1],
    },
    "TRANSFORMER": {
        "HIDDEN_SIZE": 768,
        "NUM_ATTENTION_HEADS": 12,
        "INTERMEDIATE_SIZE": 3072,
        "NUM_HIDDEN_LAYERS": 6,
        "NUM_HIDDEN_GROUPS": 1,
        "INNER_GROUP_NUM": 1,
        "HIDDEN_ACT": "gelu",
        "HIDDEN_DROPOUT_PROB": 0.1,
        "ATTENTION_PROBS_DROPOUT_PROB": 0.1,
        "MAX_POSITION_EMBEDDINGS": 22,
        "TYPE_VOCAB_SIZE": 2,
        "USE_MEAN_POOLING": False,
        "USE_DECOMPOSITION": True,
        "ORTHOGONAL_SIZE": 128,
        "ORTHOGONAL_MODE": "static",
        "ORTHOGONAL_INIT": "cayley",
        "SHARING_ACROSS_LAYERS": True,
        "SHARING_ACROSS_MODELS": True,
    },
}


def _typed_like(value: Any, default: Any, key: str) -> Any:
    """A yaml value typed as yacs types it: a string is parsed as a Python literal when the default is not a string
    (YAML 1.1 reads `1e-5` as the string "1e-5"), an int is accepted for a float, lists for tuples."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as error:
            raise ConversionError(f"{key}: {value!r} is not a {type(default).__name__}") from error
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    if type(value) is not type(default):
        raise ConversionError(
            f"{key}: {value!r} is a {type(value).__name__}, the original declares a {type(default).__name__}"
        )
    return value


def read_original_config(path: str | Path) -> dict[str, Any]:
    """An original `config.yaml`, as shipped (only what differs from the defaults) or a full `cfg.dump()`, merged onto
    `ORIGINAL_DEFAULTS` with the defaults' types. Unreadable or malformed files raise `ConversionError`."""
    try:
        with open(path) as handle:
            loaded = yaml.safe_load(handle)
    except OSError as error:
        raise ConversionError(f"{path}: cannot read the original config ({error.strerror or error})") from error
    except yaml.YAMLError as error:
        raise ConversionError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from error
    if not isinstance(loaded, dict):
        raise ConversionError(f"{path}: expected a mapping of config sections, got {type(loaded).__name__}")
    merged = copy.deepcopy(ORIGINAL_DEFAULTS)
    for section, values in loaded.items():
        if section not in merged or not isinstance(values, dict):
            continue  # sections this converter does not read (TRAIN, DATA_LOADER, ...) or scalar keys (NUM_GPUS)
        for key, value in values.items():
            default = merged[section].get(key)
            merged[section][key] = value if default is None else _typed_like(value, default, f"{path}: {section}.{key}")
    return merged


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(f"Unsupported original configuration: {message}")


def config_kwargs_from_original(original: dict[str, Any], task: str) -> dict[str, Any]:
    """Map an original `cfg.dump()` yaml (as a dict) onto `AVBertConfig` keyword arguments."""
    model, data, solver = original["MODEL"], original["DATA"], original["SOLVER"]
    original_task = _ORIGINAL_TASK_NAMES.get(model["TASK"])
    _require(original_task == task, f"MODEL.TASK={model['TASK']} does not match --task {task}.")
    kwargs = default_config_kwargs(task)
    kwargs.update(
        num_labels=model["NUM_CLASSES"],
        classifier_dropout=model["DROPOUT_RATE"],
        batch_norm_eps=model["EPSILON"],
        head_layer_norm_eps=model["EPSILON"],
        batch_norm_momentum=model["MOMENTUM"],
        classifier_loss=model["LOSS_FUNC"],
        multi_margin_margin=model.get("MARGIN", 0.1),
        initializer_range=model["FC_INIT_STD"],
        zero_init_final_batch_norm=model["ZERO_INIT_FINAL_BN"],
        freeze_encoder=solver["PROTOCOL"] == "linear_eval",
        num_frames=data["NUM_FRAMES"],
        num_mel_bins=data["AUDIO_FREQUENCY"],
        audio_num_frames=data["AUDIO_TIME"],
    )
    _require(model["LOSS_FUNC"] in ("cross_entropy", "multi_margin"), f"MODEL.LOSS_FUNC={model['LOSS_FUNC']}.")

    if kwargs.get("use_visual", True):
        resnet = original["RESNET"]
        depth = resnet["DEPTH"]
        _require(depth in _RESNET_DEPTHS, f"RESNET.DEPTH={depth} (supported: {sorted(_RESNET_DEPTHS)}).")
        _require(resnet["TRANS_FUNC"] == "bottleneck_transform", f"RESNET.TRANS_FUNC={resnet['TRANS_FUNC']}.")
        _require(resnet["NUM_GROUPS"] == 1 and not resnet["STRIDE_1X1"], "grouped or stride-1x1 visual blocks.")
        _require(
            [list(d) for d in resnet["NUM_BLOCK_TEMP_KERNEL"]] == [[n] for n in _RESNET_DEPTHS[depth]],
            "temporal kernels on only some blocks of a stage (RESNET.NUM_BLOCK_TEMP_KERNEL).",
        )
        _require(resnet["SPATIAL_STRIDES"] == [[1], [2], [2], [2]], "RESNET.SPATIAL_STRIDES other than 1,2,2,2.")
        _require(resnet["SPATIAL_DILATIONS"] == [[1]] * 4, "dilated visual stages.")
        kwargs.update(visual_base_width=resnet["WIDTH_PER_GROUP"], visual_depths=_RESNET_DEPTHS[depth])
    if kwargs.get("use_audio", True):
        audio = original["AUDIO_RESNET"]
        depth = audio["DEPTH"]
        _require(depth in _RESNET_DEPTHS, f"AUDIO_RESNET.DEPTH={depth}.")
        _require(audio["TRANS_FUNC"] == "bottleneck_transform", f"AUDIO_RESNET.TRANS_FUNC={audio['TRANS_FUNC']}.")
        _require(audio["NUM_GROUPS"] == 1 and not audio["STRIDE_1X1"], "grouped or stride-1x1 audio blocks.")
        _require(audio["STRIDES"] == [2, 2, 2, 2] and audio["DILATIONS"] == [1] * 4, "audio strides/dilations.")
        kwargs.update(audio_base_width=audio["WIDTH_PER_GROUP"], audio_depths=_RESNET_DEPTHS[depth])
    if task == "kinetics-sounds":
        transformer = original["TRANSFORMER"]
        _require(model["FUSION"] == "mid", f"MODEL.FUSION={model['FUSION']} (only mid fusion runs in the original).")
        _require(transformer["ORTHOGONAL_MODE"] == "static", f"ORTHOGONAL_MODE={transformer['ORTHOGONAL_MODE']}.")
        _require(not transformer["USE_MEAN_POOLING"], "TRANSFORMER.USE_MEAN_POOLING=True.")
        _require(
            transformer["SHARING_ACROSS_LAYERS"] and transformer["SHARING_ACROSS_MODELS"],
            "checkpoints without sharing across layers and models (their key layout is not covered).",
        )
        _require(transformer["NUM_HIDDEN_GROUPS"] == 1 and transformer["INNER_GROUP_NUM"] == 1, "ALBERT groups.")
        kwargs.update(
            fusion=model["FUSION"],
            num_clips=data["SEQUENCE_LENGTH"],
            hidden_size=transformer["HIDDEN_SIZE"],
            num_attention_heads=transformer["NUM_ATTENTION_HEADS"],
            intermediate_size=transformer["INTERMEDIATE_SIZE"],
            num_hidden_layers=transformer["NUM_HIDDEN_LAYERS"],
            hidden_act=transformer["HIDDEN_ACT"],
            hidden_dropout_prob=transformer["HIDDEN_DROPOUT_PROB"],
            attention_probs_dropout_prob=transformer["ATTENTION_PROBS_DROPOUT_PROB"],
            max_position_embeddings=transformer["MAX_POSITION_EMBEDDINGS"],
            type_vocab_size=transformer["TYPE_VOCAB_SIZE"],
            use_decomposition=transformer["USE_DECOMPOSITION"],
            orthogonal_size=transformer["ORTHOGONAL_SIZE"],
            orthogonal_init=transformer["ORTHOGONAL_INIT"],
        )
    return kwargs


def build_config(
    task: str, original_config_path: str | Path | None = None, labels: list[str] | None = None
) -> AVBertConfig:
    if original_config_path is None:
        kwargs = default_config_kwargs(task)
    else:
        kwargs = config_kwargs_from_original(read_original_config(original_config_path), task)
    if labels is not None:
        if len(labels) != kwargs["num_labels"]:
            raise ConversionError(f"Got {len(labels)} label names for a {kwargs['num_labels']}-way classifier.")
        kwargs["id2label"] = dict(enumerate(labels))
        kwargs["label2id"] = {label: index for index, label in enumerate(labels)}
    return AVBertConfig(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# State dict
# ----------------------------------------------------------------------------------------------------------------

_VISUAL_BRANCH2 = {"a": "conv1", "a_bn": "bn1", "b": "conv2", "b_bn": "bn2", "c": "conv3", "c_bn": "bn3"}
_AUDIO_BRANCH2 = {
    **_VISUAL_BRANCH2,
    "b1": "conv2_freq",
    "b1_bn": "bn2_freq",
    "b2": "conv2_time",
    "b2_bn": "bn2_time",
}
_AUDIO_STEM = {"conv1": "stem_conv_freq", "bn1": "stem_bn_freq", "conv2": "stem_conv_time", "bn2": "stem_bn_time"}
_TRANSFORMER_MODULES = {
    "attention.factor_query": "attention.query",
    "attention.factor_key": "attention.key",
    "attention.factor_value": "attention.value",
    "attention.factor_dense": "attention.output",
    "factor_ffn": "intermediate",
    "factor_ffn_output": "output",
    "attention.query": "attention.query",
    "attention.key": "attention.key",
    "attention.value": "attention.value",
    "attention.dense": "attention.output",
    "ffn": "intermediate",
    "ffn_output": "output",
    "attention.LayerNorm": "attention.layer_norm",
    "full_layer_layer_norm": "layer_norm",
}
_FACTOR_PARTS = (
    (re.compile(r"ms(\d+)_linear\.weight"), r"private.\1.weight"),
    (re.compile(r"orthogonal_ms(\d+)_linear\.A"), r"rotations.\1.generator"),
    (re.compile(r"orthogonal_ms(\d+)_linear\.base"), r"rotations.\1.base"),
    (re.compile(r"s_linear\.(weight|bias)"), r"shared.\1"),
)
_BACKBONE_RENAMES = {
    "visual_fc.": "visual_projection.dense.",
    "visual_norm.": "visual_projection.layer_norm.",
    "audio_fc.": "audio_projection.dense.",
    "audio_norm.": "audio_projection.layer_norm.",
    "single_visual_embeddings.": "visual_embeddings.",
    "single_audio_embeddings.": "audio_embeddings.",
    "multi_embeddings.": "multimodal_embeddings.",
}
_HEAD_RENAMES = {
    "concat_head.projection.": "clip_head.classifier.",
    "concat_seq_head.fc1.": "sequence_head.visual_dense.",
    "concat_seq_head.fc2.": "sequence_head.audio_dense.",
    "concat_seq_head.ln.": "sequence_head.layer_norm.",
    "concat_seq_head.projection.": "sequence_head.classifier.",
    "visual_conv.head.projection.": "clip_head.classifier.",
    "audio_conv.head.projection.": "clip_head.classifier.",
    "audio_head.projection.": "clip_head.classifier.",
}


def _rename_visual(key: str) -> str | None:
    if match := re.fullmatch(r"s1\.pathway0_stem\.(conv|bn)\.(.+)", key):
        return f"stem_{match[1]}.{match[2]}"
    if match := re.fullmatch(r"s(\d)\.pathway0_res(\d+)\.(branch1|branch1_bn|branch2\.\w+?)\.(\w+)", key):
        stage, block, module, param = int(match[1]) - 2, match[2], match[3], match[4]
        if module.startswith("branch1"):
            target = "downsample.0" if module == "branch1" else "downsample.1"
        elif (target := _VISUAL_BRANCH2.get(module.removeprefix("branch2."))) is None:
            return None
        return f"stages.{stage}.{block}.{target}.{param}"
    return None


def _rename_audio(key: str) -> str | None:
    if match := re.fullmatch(r"s1\.stem\.(conv1|bn1|conv2|bn2)\.(.+)", key):
        return f"{_AUDIO_STEM[match[1]]}.{match[2]}"
    if match := re.fullmatch(r"s(\d)\.res(\d+)\.(branch1|branch1_bn|branch2\.\w+?)\.(\w+)", key):
        stage, block, module, param = int(match[1]) - 2, match[2], match[3], match[4]
        if module.startswith("branch1"):
            target = "downsample.0" if module == "branch1" else "downsample.1"
        elif (target := _AUDIO_BRANCH2.get(module.removeprefix("branch2."))) is None:
            return None
        return f"stages.{stage}.{block}.{target}.{param}"
    return None


def _rename_transformer_layer(key: str) -> str | None:
    """A key inside the shared ALBERT layer -> our `layers.0.` key; `None` if not understood."""
    module = max((m for m in _TRANSFORMER_MODULES if key.startswith(m + ".")), key=len, default=None)
    if module is None:
        return None
    rest = key[len(module) + 1 :]
    target = _TRANSFORMER_MODULES[module]
    if module.split(".")[-1].startswith("factor_"):
        for pattern, replacement in _FACTOR_PARTS:
            if pattern.fullmatch(rest):
                return f"layers.0.{target}.{pattern.sub(replacement, rest)}"
        return None
    return f"layers.0.{target}.{rest}" if rest in ("weight", "bias") else None


def _rename_backbone(key: str) -> str | None:
    """A key of the original `AVBert` module (without the `avbert.` prefix) -> ours (without `avbert.`)."""
    if key.startswith("visual_conv."):
        renamed = _rename_visual(key.removeprefix("visual_conv."))
        return None if renamed is None else "visual_encoder." + renamed
    if key.startswith("audio_conv."):
        renamed = _rename_audio(key.removeprefix("audio_conv."))
        return None if renamed is None else "audio_encoder." + renamed
    if key.startswith(_SHARED_LAYER_PREFIX):
        renamed = _rename_transformer_layer(key.removeprefix(_SHARED_LAYER_PREFIX))
        return None if renamed is None else "transformer." + renamed
    for old, new in _BACKBONE_RENAMES.items():
        if key.startswith(old):
            return new + key.removeprefix(old).replace("LayerNorm.", "layer_norm.")
    return None


def _check_aliases(state_dict: dict[str, torch.Tensor]) -> None:
    """The original registers one transformer under four names; the aliases must hold the very same tensors."""
    for key, value in state_dict.items():
        for alias in _TRANSFORMER_ALIASES:
            if key.startswith("avbert." + alias):
                source = "avbert.transformer." + key.removeprefix("avbert." + alias)
                if source not in state_dict or not torch.equal(state_dict[source], value):
                    raise ConversionError(
                        f"{key} is not an alias of {source}: this checkpoint does not share the transformer across "
                        "models, which the converter does not support."
                    )


def _check_cached_rotations(cached: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    """Compare the original's cached B with the matrices derived from the converted generators."""
    from .modeling_avbert import AVBertOrthogonal

    modules = dict(model.named_modules())
    worst = 0.0
    for module_name, cached_matrix in cached.items():
        module = modules.get(module_name)
        if not isinstance(module, AVBertOrthogonal):
            raise ConversionError(f"Cached orthogonal matrix for an unknown module: {module_name}")
        with torch.no_grad():
            difference = (module().double() - cached_matrix.double()).abs().max().item()
        worst = max(worst, difference)
    if worst > _ROTATION_SELF_CHECK_ATOL:
        raise ConversionError(
            f"The orthogonal matrices derived from the converted generators differ from the checkpoint's cached `_B` "
            f"by {worst:.3g}: the generator layout is not the one this converter expects."
        )
    return worst


def verify_archive(path: str | Path) -> None:
    """Check the CRC-32 of every member of a zip-format checkpoint (torch >= 1.6 saves zips): `torch.load` does not,
    so flipped bytes inside a tensor would load as wrong weights without a word."""
    if not zipfile.is_zipfile(path):
        return  # a legacy pickle checkpoint has no checksums; torch.load judges it
    try:
        with zipfile.ZipFile(path) as archive:
            corrupted = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ConversionError(f"{path}: a damaged checkpoint archive ({error})") from error
    if corrupted is not None:
        raise ConversionError(f"{path}: corrupted checkpoint, the checksum of {corrupted} does not match its bytes")


def _starts_like_a_pickle(path: str | Path) -> bool:
    """Whether the file begins with a pickle's protocol opcode (PROTO, 0x80), as torch's legacy format does."""
    try:
        with open(path, "rb") as file:
            return file.read(1) == b"\x80"
    except OSError as error:
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({error.strerror or error})") from error


def load_original_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Read an original `.pyth`; returns the merged model (and linear-eval head) state dict and whether it is the
    pretrained (head-less) layout."""
    verify_archive(path)
    if not zipfile.is_zipfile(path) and not _starts_like_a_pickle(path):
        raise ConversionError(
            f"{path}: not a PyTorch checkpoint (neither the zip archive torch.save writes nor a legacy pickle); "
            "give the original's .pyth file"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a non-checkpoint file
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}.")
    if "model_state_dict" in checkpoint:
        state_dict = dict(checkpoint["model_state_dict"])
        state_dict.update(checkpoint.get("head_state_dict") or {})
        return state_dict, False
    if "state_dict" in checkpoint:
        return dict(checkpoint["state_dict"]), True
    raise ConversionError(
        f"{path}: expected the key 'state_dict' (released pretrained checkpoint) or 'model_state_dict' "
        f"(fine-tuned checkpoint), found {sorted(checkpoint)}."
    )


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], task: str, pretrained_layout: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """
    Rename an original state dict to this implementation's keys.

    Returns the converted tensors, the cached `_B` matrices keyed by the module they belong to (for a self-check), and
    the keys that were deliberately dropped (aliases, pretraining heads, parts the task does not use).
    """
    _check_aliases(state_dict)
    converted: dict[str, torch.Tensor] = {}
    cached_rotations: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in state_dict.items():
        if any(key.startswith("avbert." + alias) for alias in _TRANSFORMER_ALIASES):
            dropped.append(key)
            continue
        if pretrained_layout and task != "kinetics-sounds":
            # As the original: the CNN-only tasks take the matching CNN from the pretrained checkpoint, nothing else.
            wanted = "avbert.visual_conv." if task == "ucf101" else "avbert.audio_conv."
            if not key.startswith(wanted):
                dropped.append(key)
                continue
            key = key.removeprefix("avbert.")
        if pretrained_layout and "head" in key:  # pretraining heads, discarded by the original loader too
            dropped.append(key)
            continue

        head_key = next(
            (new + key.removeprefix(old) for old, new in _HEAD_RENAMES.items() if key.startswith(old)), None
        )
        if head_key is not None:
            converted[head_key] = value
            continue
        if task == "kinetics-sounds":
            if not key.startswith("avbert."):
                unknown.append(key)
                continue
            backbone_key = key.removeprefix("avbert.")
        else:
            backbone_key = key
        if backbone_key.endswith("._B"):
            module_key = _rename_backbone(backbone_key.removesuffix("._B") + ".base")
            if module_key is None:
                unknown.append(key)
            else:
                cached_rotations["avbert." + module_key.removesuffix(".base")] = value
            continue
        if backbone_key == "summary_encoding.bos_embeddings.weight":
            converted["avbert.visual_projection.summary_token"] = value[0]
            converted["avbert.audio_projection.summary_token"] = value[1]
            continue
        renamed = _rename_backbone(backbone_key)
        if renamed is None:
            unknown.append(key)
        else:
            converted["avbert." + renamed] = value
    if unknown:
        listing = "\n  ".join(unknown[:20]) + ("\n  ..." if len(unknown) > 20 else "")
        raise ConversionError(f"{len(unknown)} checkpoint keys are not understood by the converter:\n  {listing}")
    return converted, cached_rotations, dropped


def convert_checkpoint(
    checkpoint_path: str | Path,
    output_dir: str | Path | None,
    task: str,
    original_config_path: str | Path | None = None,
    labels: list[str] | None = None,
    seed: int = 0,
) -> AVBertForVideoClassification | AVBertForAudioClassification:
    """Convert an original checkpoint; writes a `save_pretrained` folder when `output_dir` is given."""
    if task not in TASKS:
        raise ConversionError(f"Unknown task {task!r}; choose one of {TASKS}.")
    state_dict, pretrained_layout = load_original_checkpoint(checkpoint_path)
    config = build_config(task, original_config_path, labels)
    try:
        model, parity = _convert_into_model(state_dict, task, pretrained_layout, config, seed)
    except ConversionError as error:
        likely = _likely_task(state_dict, pretrained_layout)
        if likely is not None and likely != task:
            raise ConversionError(
                f"{error}\nThis looks like a checkpoint of the {likely} task: pass --task {likely}."
            ) from error
        raise
    if output_dir is not None:
        model.save_pretrained(output_dir)
        build_preprocessor(config, task, original_config_path).save_pretrained(output_dir)
        write_model_card(
            output_dir,
            model,
            license="unknown",
            provenance=converted_provenance(checkpoint_path, task, pretrained_layout),
            parity=parity,
        )
    return model


def _likely_task(state_dict: dict[str, torch.Tensor], pretrained_layout: bool) -> str | None:
    """The task a fine-tuned checkpoint's key prefixes say it was trained for (a pretrained one serves every task)."""
    if pretrained_layout:
        return None
    prefixes = {key.split(".")[0] for key in state_dict}
    if "avbert" in prefixes:
        return "kinetics-sounds"
    if prefixes <= {"visual_conv"}:
        return "ucf101"
    if prefixes <= {"audio_conv", "audio_head"}:
        return "esc50"
    return None


def _convert_into_model(
    state_dict: dict[str, torch.Tensor], task: str, pretrained_layout: bool, config: AVBertConfig, seed: int
) -> tuple[AVBertForVideoClassification | AVBertForAudioClassification, dict[str, float]]:
    """The converted model (in eval mode) and the parity figures measured on the way, for the model card."""
    from .modeling_avbert import AVBertForAudioClassification, AVBertForVideoClassification

    converted, cached_rotations, dropped = convert_state_dict(state_dict, task, pretrained_layout)

    # Heads missing from a pretrained checkpoint start as in the original: N(0, 0.01) weights, zero biases.
    torch.manual_seed(seed)
    model_class = AVBertForAudioClassification if task == "esc50" else AVBertForVideoClassification
    model = model_class(config)
    expected = model.state_dict()
    unexpected = sorted(set(converted) - set(expected))
    if unexpected:
        raise ConversionError(f"Converted keys that the {task} model does not have: {unexpected[:20]}")
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in converted.items()
        if value.shape != expected[key].shape
    ]
    if mismatched:
        raise ConversionError(
            "Checkpoint shapes do not match the configuration (pass --original-config?):\n  " + "\n  ".join(mismatched)
        )
    missing = sorted(set(expected) - set(converted))
    model.load_state_dict(converted, strict=False)
    missing_backbone = [key for key in missing if key.startswith("avbert.")]
    if missing_backbone or (missing and not pretrained_layout):
        raise ConversionError(f"The checkpoint lacks weights the {task} model needs: {missing_backbone or missing}")
    if missing:
        logger.info("Initialized the task heads, absent from the pretrained checkpoint: %s", missing)
    if dropped:
        logger.info("Dropped %d keys (transformer aliases, pretraining heads, unused parts).", len(dropped))
    parity = {}
    if cached_rotations:
        worst = _check_cached_rotations(cached_rotations, model)
        logger.info("Orthogonal matrices agree with the checkpoint's cached _B within %.2g.", worst)
        parity["max abs difference of the orthogonal matrices to the checkpoint's cached `_B`"] = worst
    return model.eval(), parity


def build_preprocessor(
    config: AVBertConfig, task: str, original_config_path: str | Path | None = None
) -> AVBertProcessor | AVBertFeatureExtractor:
    """The preprocessing the task's model was trained with, from the original config when given (else its defaults):
    ESC-50 windows of `CLIP_DURATION` s spread over each recording; the video tasks' clips of `NUM_FRAMES` frames
    (every `SAMPLING_RATE`-th at `TARGET_FPS`), short side and test crops `TEST_CROP_SIZE`, training crops
    `TRAIN_CROP_SIZE` after a short side in `TRAIN_JITTER_SCALES`, with the sound under each clip when it hears."""
    from .feature_extraction_avbert import AVBertFeatureExtractor
    from .processing_avbert import AVBertProcessor
    from .video_processing_avbert import AVBertVideoProcessor

    data = (read_original_config(original_config_path) if original_config_path else ORIGINAL_DEFAULTS)["DATA"]
    rate = data["TARGET_AUDIO_RATE"]
    if task == "esc50":
        return AVBertFeatureExtractor(
            feature_size=config.num_mel_bins,
            num_time_frames=config.audio_num_frames,
            num_clips=config.num_clips,
            clip_samples=int(data["CLIP_DURATION"] * rate),
        )
    video_processor = AVBertVideoProcessor(
        num_frames=config.num_frames,
        num_clips=config.num_clips,
        frame_sampling_rate=data["SAMPLING_RATE"],
        target_fps=data["TARGET_FPS"],
        size={"shortest_edge": data["TEST_CROP_SIZE"]},
        crop_size={"height": data["TEST_CROP_SIZE"], "width": data["TEST_CROP_SIZE"]},
        train_crop_size=data["TRAIN_CROP_SIZE"],
        train_jitter_scales=tuple(data["TRAIN_JITTER_SCALES"]),
        image_mean=tuple(data["MEAN"]),
        image_std=tuple(data["STD"]),
        load_audio_in_video=config.use_audio,
    )
    clip_samples = int(rate * config.num_frames * video_processor.frame_sampling_rate / video_processor.target_fps)
    feature_extractor = AVBertFeatureExtractor(
        feature_size=config.num_mel_bins,
        num_time_frames=config.audio_num_frames,
        num_clips=config.num_clips,
        clip_samples=clip_samples,
    )
    return AVBertProcessor(feature_extractor=feature_extractor, video_processor=video_processor)


def main(argv: list[str] | None = None) -> int:
    """`avbert-convert`: 0 when the folder is written; 2 with a one-line `avbert-convert: error:` otherwise."""
    parser = argparse.ArgumentParser(
        prog="avbert-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="original checkpoint (.pyth)")
    parser.add_argument("output_dir", help="folder to write (config.json, model.safetensors)")
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--original-config", help="the original's config.yaml (default: the released architecture)")
    parser.add_argument("--labels", help="text file with one class name per line, in label-index order")
    parser.add_argument("--seed", type=int, default=0, help="seed for heads a pretrained checkpoint lacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        labels = None
        if args.labels:
            try:
                text = Path(args.labels).read_text()
            except OSError as error:
                raise ConversionError(f"--labels {args.labels}: {error.strerror or error}") from error
            labels = [line.strip() for line in text.splitlines() if line.strip()]
        convert_checkpoint(args.checkpoint, args.output_dir, args.task, args.original_config, labels, args.seed)
    except ConversionError as error:
        parser.exit(2, f"avbert-convert: error: {error}\n")
    print(f"Wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
