"""AVBERT model configuration."""

import os

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.generation.configuration_utils import GenerationConfig
from transformers.utils import CONFIG_NAME, logging

logger = logging.get_logger(__name__)

FUSION_MODES = ("mid", "late", "early")
ORTHOGONAL_MAPS = ("matrix_exp", "cayley")
ORTHOGONAL_INITS = ("cayley", "henaff")
CLASSIFIER_LOSSES = ("cross_entropy", "multi_margin")
NEGATIVE_SAMPLING = ("cans", "random", "easy", "hard")

# Keyword arguments that `PreTrainedConfig` itself consumes or that `from_pretrained` passes along. Anything else that
# is not a field of `AVBertConfig` is kept as an attribute, as every transformers config does (tools, PEFT and users
# add their own), with a warning that names it in case it is a typo (see `__post_init__`).
_BASE_CONFIG_KWARGS = frozenset(
    {
        "num_labels",
        "torch_dtype",
        "name_or_path",
        "_name_or_path",
        "_commit_hash",
        "output_attentions",
        "attn_implementation",
        "experts_implementation",
        "auto_map",
        "custom_pipelines",
        "per_layer_config",
        "use_return_dict",
        "model_type",
    }
)


@strict
class AVBertConfig(PreTrainedConfig):
    r"""
    Configuration of an AVBERT model ("Parameter Efficient Multimodal Transformers for Video Representation Learning",
    Lee et al., ICLR 2021). The defaults are the released Kinetics-Sounds architecture: a 3D ResNet-50 visual encoder,
    a half-width 2D ResNet-50 audio encoder on log-mel spectrograms, and one factorized transformer layer shared across
    6 layers and across the visual, audio and multimodal stages (3,843,840 transformer parameters).

    Modalities and fusion:
        use_visual (`bool`, defaults to `True`): build the visual encoder (input `pixel_values`).
        use_audio (`bool`, defaults to `True`): build the audio encoder (input `input_features`).
        use_transformer (`bool`, defaults to `True`): build the transformer on top of the per-clip CNN features.
            `False` gives the CNN-only models of the original UCF101 and ESC-50 recipes.
        fusion (`str`, defaults to `"mid"`): `"mid"` (visual and audio stages, then a multimodal stage), `"late"`
            (visual and audio stages only) or `"early"` (one multimodal stage on the projected CNN features).
        num_clips (`int`, defaults to 10): clips per video the processors produce; the model accepts any number up
            to `max_position_embeddings - 1`.

    Visual encoder (3D ResNet, PySlowFast "slow-only" layout):
        num_channels (`int`, defaults to 3), num_frames (`int`, defaults to 32): frames per clip.
        visual_base_width (`int`, defaults to 64): stem width; stage k has bottleneck width `base * 2**k` and output
            width `4 * base * 2**k`.
        visual_depths (`list[int]`, defaults to `(3, 4, 6, 3)`): bottleneck blocks per stage (ResNet-50).
        visual_temporal_kernel_sizes (`list[int]`, defaults to `(1, 1, 3, 3)`): temporal kernel of the first
            convolution of every block of each stage.
        visual_stem_temporal_kernel_size (`int`, defaults to 5): temporal kernel of the stem (temporal stride 2).

    Audio encoder (2D ResNet on `(1, mel, time)` log-mel spectrograms):
        num_mel_bins (`int`, defaults to 80), audio_num_frames (`int`, defaults to 128): spectrogram size per clip.
        audio_base_width (`int`, defaults to 32), audio_depths (`list[int]`, defaults to `(3, 4, 6, 3)`).
        audio_num_separable_stages (`int`, defaults to 2): leading stages whose 3x3 convolution is split into a
            frequency (3x1) and a time (1x3) convolution.
        batch_norm_eps (`float`, defaults to 1e-5), batch_norm_momentum (`float`, defaults to 0.1).
        zero_init_final_batch_norm (`bool`, defaults to `True`): initialise the last BatchNorm of every residual
            block with a zero scale.
        cnn_fast_inference (`bool`, defaults to `True`): in eval forwards, run both CNNs on channels-last activations
            with every BatchNorm folded into its convolution (recomputed from the current weights on every forward).
            It changes the order of floating-point operations only, no parameter; `False` gives the plain path
            (docs/performance.md). Configs saved without it load with the default.
        cnn_channels_last_training (`bool`, defaults to `True`): run both CNNs on channels-last activations in
            training forwards too (BatchNorm unfolded, on batch statistics; the gradients match the plain path's to
            rounding). `False` gives the plain, contiguous training path (docs/performance.md).

    Transformer:
        hidden_size, num_attention_heads, intermediate_size, num_hidden_layers, hidden_act, hidden_dropout_prob
            (embeddings), attention_probs_dropout_prob (attention probabilities and attention output, as in the
            original ALBERT layer), max_position_embeddings, type_vocab_size, layer_norm_eps: as in BERT/ALBERT.
        sharing_across_layers (`bool`, defaults to `True`): one layer applied `num_hidden_layers` times.
        sharing_across_models (`bool`, defaults to `True`): one transformer for the visual, audio and multimodal
            stages, which differ only in their private low-rank factors.
        use_decomposition (`bool`, defaults to `True`): factorize the six projections of the layer into a private
            `in -> r` map, L2 normalization, a private `r x r` orthogonal matrix and a shared `r -> out` map.
        orthogonal_size (`int`, defaults to 128): the rank `r`.
        orthogonal_map (`str`, defaults to `"matrix_exp"`): how the orthogonal matrix is derived from its skew
            generator: `"matrix_exp"` (the original) or `"cayley"`.
        orthogonal_init (`str`, defaults to `"cayley"`): initial rotation angles, `"cayley"` (in [0, 1)) or
            `"henaff"` (uniform in [-pi, pi)).

    Heads and losses:
        classifier_dropout (`float`, defaults to 0.5), head_layer_norm_eps (`float`, defaults to 1e-5).
        classifier_loss (`str`, defaults to `"cross_entropy"`): `"cross_entropy"` or `"multi_margin"` (the ESC-50
            linear evaluation), with margin `multi_margin_margin` (defaults to 0.1).
        freeze_encoder (`bool`, defaults to `False`): linear evaluation; the backbone runs frozen, in eval mode and
            without gradients, and only the classifier learns.
        initializer_range (`float`, defaults to 0.01): std of every Linear and Embedding at initialization (the
            original's FC_INIT_STD).

    Self-supervised pretraining ([`AVBertForPreTraining`]; choices the paper leaves open, see docs/pretraining.md):
        mask_ratio (`float`, defaults to 0.15): fraction of the clip positions of each modality masked per sequence.
        contrastive_temperature (`float`, defaults to 1.0): divides the masked-embedding-prediction scores (the
            paper's formula is a plain dot product).
        num_negatives (`int`, defaults to 16): negatives per masked position, drawn from the batch.
        negative_sampling (`str`, defaults to `"cans"`): `"cans"` (content-aware: probability proportional to the
            similarity of CNN embeddings), `"random"`, `"easy"` (proportional to dissimilarity) or `"hard"` (the most
            similar ones).
        cans_outlier_quantile (`float`, defaults to 0.025): candidates whose distance to the anchor is below / above
            this quantile / its complement are dropped before the rest are rescaled to [0, 1] (the paper keeps the
            95% interval: no near-duplicates, no far-off clips).
        pair_negative_ratio (`float`, defaults to 0.5): fraction of a batch whose sound track is swapped with another
            video's for correct-pair prediction.
        mep_loss_weight, pair_loss_weight (`float`, default 1.0): weights of the two objectives.
    """

    model_type = "avbert"

    use_visual: bool = True
    use_audio: bool = True
    use_transformer: bool = True
    fusion: str = "mid"
    num_clips: int = 10

    num_channels: int = 3
    num_frames: int = 32
    visual_base_width: int = 64
    visual_depths: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    visual_temporal_kernel_sizes: list[int] | tuple[int, ...] = (1, 1, 3, 3)
    visual_stem_temporal_kernel_size: int = 5

    num_mel_bins: int = 80
    audio_num_frames: int = 128
    audio_base_width: int = 32
    audio_depths: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    audio_num_separable_stages: int = 2

    batch_norm_eps: float = 1e-5
    batch_norm_momentum: float = 0.1
    zero_init_final_batch_norm: bool = True
    cnn_fast_inference: bool = True
    cnn_channels_last_training: bool = True

    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_hidden_layers: int = 6
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 22
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    sharing_across_layers: bool = True
    sharing_across_models: bool = True
    use_decomposition: bool = True
    orthogonal_size: int = 128
    orthogonal_map: str = "matrix_exp"
    orthogonal_init: str = "cayley"

    classifier_dropout: float | int = 0.5
    head_layer_norm_eps: float = 1e-5
    classifier_loss: str = "cross_entropy"
    multi_margin_margin: float = 0.1
    freeze_encoder: bool = False
    initializer_range: float = 0.01

    mask_ratio: float = 0.15
    contrastive_temperature: float = 1.0
    num_negatives: int = 16
    negative_sampling: str = "cans"
    cans_outlier_quantile: float = 0.025
    pair_negative_ratio: float = 0.5
    mep_loss_weight: float = 1.0
    pair_loss_weight: float = 1.0

    def __post_init__(self, **kwargs):
        generation_keys = GenerationConfig._get_default_generation_params().keys()
        unknown = sorted(k for k in kwargs if k not in _BASE_CONFIG_KWARGS and k not in generation_keys)
        if unknown:
            logger.warning(
                f"AVBertConfig does not declare {', '.join(unknown)}; kept as attribute(s) but unused by AVBERT "
                "(check the spelling if you meant a field of AVBertConfig)."
            )
        super().__post_init__(**kwargs)
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {self.num_labels}.")
        # `@strict` runs the `validate_*` methods too (again on `save_pretrained`), but wraps their errors in its own
        # exception type; running them here first gives users a plain ValueError.
        self.validate_modalities()
        self.validate_encoders()
        self.validate_transformer()
        self.validate_heads()
        self.validate_pretraining()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        # `PreTrainedConfig.from_pretrained` only warns when config.json names another model type (and reads the
        # file as AVBERT's anyway); the Auto classes meet such a folder first and, as its `auto_map` points to this
        # code, ask whether to run it. Say what is wrong with the file instead (direct loads and the CLIs).
        subfolder = kwargs.get("subfolder") or ""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type != cls.model_type:
            source = str(pretrained_model_name_or_path)
            if not os.path.isfile(source):  # a folder (or hub id), not the json file itself
                source = os.path.join(source, subfolder, CONFIG_NAME)
            found = "has no model_type" if model_type is None else f"has model_type {model_type!r}"
            raise ValueError(
                f'{source} {found}, but it describes an AVBERT model: set "model_type": "{cls.model_type}" in it '
                "(the Auto classes and pipeline() need it to find the AVBERT classes)."
            )
        return config_dict, kwargs

    def _require(self, condition: str, *names: str) -> None:
        """Raise a ValueError naming the first field of `names` whose value fails `condition` (positive, ...)."""
        checks = {
            "positive": lambda value: value > 0,
            "non-negative": lambda value: value >= 0,
            "in [0, 1]": lambda value: 0 <= value <= 1,
        }
        for name in names:
            value = getattr(self, name)
            if not checks[condition](value):
                raise ValueError(f"{name} must be {condition}, got {value}.")

    def validate_modalities(self):
        if not (self.use_visual or self.use_audio):
            raise ValueError("AVBertConfig needs at least one modality: use_visual or use_audio must be True.")
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}.")
        self._require("positive", "num_clips")

    def validate_encoders(self):
        self._require("positive", "num_channels", "num_frames", "num_mel_bins", "audio_num_frames")
        self._require("positive", "batch_norm_eps")
        self._require("in [0, 1]", "batch_norm_momentum")
        if len(self.visual_depths) != len(self.visual_temporal_kernel_sizes):
            raise ValueError(
                "visual_depths and visual_temporal_kernel_sizes must have one entry per stage, got "
                f"{list(self.visual_depths)} and {list(self.visual_temporal_kernel_sizes)}."
            )
        if any(k % 2 == 0 for k in (*self.visual_temporal_kernel_sizes, self.visual_stem_temporal_kernel_size)):
            raise ValueError("Temporal kernel sizes must be odd so that 'same' padding keeps the frame count.")
        if not 0 <= self.audio_num_separable_stages <= len(self.audio_depths):
            raise ValueError(
                f"audio_num_separable_stages must be in [0, {len(self.audio_depths)}], "
                f"got {self.audio_num_separable_stages}."
            )
        if min(*self.visual_depths, *self.audio_depths, self.visual_base_width, self.audio_base_width) < 1:
            raise ValueError("Encoder depths and widths must be positive.")

    def validate_transformer(self):
        self._require(
            "positive",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "num_hidden_layers",
            "max_position_embeddings",
            "type_vocab_size",
        )
        self._require("non-negative", "layer_norm_eps")
        self._require("in [0, 1]", "hidden_dropout_prob", "attention_probs_dropout_prob")
        from transformers.activations import ACT2FN  # torch.distributed and more: not at `import avbert`

        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act must be one of {sorted(ACT2FN)}, got {self.hidden_act!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.orthogonal_map not in ORTHOGONAL_MAPS:
            raise ValueError(f"orthogonal_map must be one of {ORTHOGONAL_MAPS}, got {self.orthogonal_map!r}.")
        if self.orthogonal_init not in ORTHOGONAL_INITS:
            raise ValueError(f"orthogonal_init must be one of {ORTHOGONAL_INITS}, got {self.orthogonal_init!r}.")
        if self.use_decomposition and not 1 <= self.orthogonal_size <= self.hidden_size:
            raise ValueError(
                f"orthogonal_size must be positive and at most hidden_size ({self.hidden_size}), "
                f"got {self.orthogonal_size}."
            )
        if "multimodal" in self.transformer_stages and self.type_vocab_size < 2:
            raise ValueError(
                f"type_vocab_size must be at least 2 (visual and audio token types), got {self.type_vocab_size}."
            )
        if self.use_transformer and self.num_clips + 1 > self.max_position_embeddings:
            raise ValueError(
                f"num_clips={self.num_clips} needs {self.num_clips + 1} positions (summary token + clips) but "
                f"max_position_embeddings is {self.max_position_embeddings}."
            )
        if self.use_transformer and self.fusion != "mid" and not (self.use_visual and self.use_audio):
            raise ValueError(f"fusion={self.fusion!r} combines two modalities; it needs use_visual and use_audio.")

    def validate_heads(self):
        self._require("in [0, 1]", "classifier_dropout")
        self._require("non-negative", "head_layer_norm_eps", "multi_margin_margin", "initializer_range")
        if self.classifier_loss not in CLASSIFIER_LOSSES:
            raise ValueError(f"classifier_loss must be one of {CLASSIFIER_LOSSES}, got {self.classifier_loss!r}.")

    def validate_pretraining(self):
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}.")
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {self.negative_sampling!r}.")
        if self.num_negatives < 1 or self.contrastive_temperature <= 0:
            raise ValueError("num_negatives must be positive and contrastive_temperature > 0.")
        if not 0 <= self.cans_outlier_quantile < 0.5 or not 0 <= self.pair_negative_ratio <= 1:
            raise ValueError("cans_outlier_quantile must be in [0, 0.5) and pair_negative_ratio in [0, 1].")

    @property
    def visual_feature_size(self) -> int:
        """Width of the pooled visual CNN feature (2048 for the default ResNet-50)."""
        return 4 * self.visual_base_width * 2 ** (len(self.visual_depths) - 1)

    @property
    def audio_feature_size(self) -> int:
        """Width of the pooled audio CNN feature (1024 for the default half-width ResNet-50)."""
        return 4 * self.audio_base_width * 2 ** (len(self.audio_depths) - 1)

    @property
    def transformer_stages(self) -> tuple[str, ...]:
        """The transformer passes of one forward, in order; a stage's index is its modality group."""
        if not self.use_transformer:
            return ()
        if not (self.use_visual and self.use_audio):
            return ("visual",) if self.use_visual else ("audio",)
        return {"mid": ("visual", "audio", "multimodal"), "late": ("visual", "audio"), "early": ("multimodal",)}[
            self.fusion
        ]


__all__ = ["AVBertConfig"]
