"""PyTorch AVBERT: per-clip visual and audio CNNs under one parameter-shared, low-rank factorized transformer."""

import copy
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_avbert import AVBertConfig
from .model_card import write_model_card
from .weights_checksum import verify_weight_checksums, write_weight_checksums


@dataclass
class AVBertModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
        Output of the last transformer stage. With both modalities the sequence is
        `[summary_v, v_1..v_S, summary_a, a_1..a_S]` (mid and early fusion: the multimodal stage; late fusion: the
        two single-modality stages concatenated); with one modality it is `[summary, x_1..x_S]`. `None` for
        CNN-only configurations.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        Whole-video embedding: the mean of the summary-token outputs of the last stage (one per modality), as the
        pooled output of CLIP / PE audio-video. `None` for CNN-only configurations.
    visual_features (`torch.FloatTensor` of shape `(batch_size, num_clips, visual_feature_size)`):
        Globally pooled visual CNN feature of every clip.
    audio_features (`torch.FloatTensor` of shape `(batch_size, num_clips, audio_feature_size)`):
        Globally pooled audio CNN feature of every clip.
    visual_last_hidden_state, audio_last_hidden_state (`torch.FloatTensor` of shape `(batch, 1 + num_clips, hidden)`):
        Outputs of the single-modality stages (mid and late fusion).
    hidden_states, attentions:
        Per-layer states and attention maps of the last stage (`num_hidden_layers + 1` and `num_hidden_layers`
        entries), returned when `output_hidden_states` / `output_attentions` are set.
    visual_hidden_states, visual_attentions, audio_hidden_states, audio_attentions:
        The same for the single-modality stages.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    visual_features: torch.FloatTensor | None = None
    audio_features: torch.FloatTensor | None = None
    visual_last_hidden_state: torch.FloatTensor | None = None
    audio_last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    audio_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    audio_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class AVBertClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, returned when `labels` are given):
        Per-clip classification loss, summed over the heads (clip head and sequence head) as in the original.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Whole-video scores: the log of the mean softmax over clips and heads, so `logits.softmax(-1)` equals the
        original's averaged test score.
    clip_logits (`torch.FloatTensor` of shape `(batch_size, num_clips, num_labels)`):
        Pre-softmax output of the clip head (on the pooled CNN features of each clip).
    sequence_logits (`torch.FloatTensor` of shape `(batch_size, num_clips, num_labels)`):
        Pre-softmax output of the sequence head (on `[summary, token]` pairs of the transformer output); `None` for
        models without a transformer.
    hidden_states, attentions:
        As in [`AVBertModelOutput`] (last transformer stage).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    clip_logits: torch.FloatTensor | None = None
    sequence_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------
# CNN encoders
# ----------------------------------------------------------------------------------------------------------------


def _is_checkpoint_recompute() -> bool:
    # Activation checkpointing replays a block's forward inside the backward pass (in both of torch.utils.checkpoint's
    # modes). Autograd exposes the id of the graph task it is running, -1 outside backward; checkpoint uses it too.
    # Compiled graphs never replay Python: AOTAutograd applies the buffer updates once.
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


def batch_norm(norm: nn.BatchNorm2d | nn.BatchNorm3d, hidden_states: torch.Tensor) -> torch.Tensor:
    """
    `norm(hidden_states)`, except in the backward-pass replay of a checkpointed module in training: batch statistics
    as in the first pass, but the running statistics, which the first pass has already updated, are left alone.
    """
    if norm.training and _is_checkpoint_recompute():
        # Throwaway copies take the update (the op must save the same tensors as in the first pass).
        running_mean, running_var = norm.running_mean.clone(), norm.running_var.clone()
        return F.batch_norm(hidden_states, running_mean, running_var, norm.weight, norm.bias, True, 0.0, norm.eps)
    return norm(hidden_states)


# oneDNN's 1x1 backward-weights kernel (torch 2.14's oneDNN 3.12, x86) writes past its workspace for a strided 1x1
# convolution of a channels-last input with fewer channels than its vector block (16 floats on AVX-512, 8 on AVX2):
# the process aborts or the weight gradient is wrong (uxlfoundation/oneDNN#6035; docs/performance.md has the repro).
# Only narrow CNNs have such a convolution (the stage-0 shortcut of an audio CNN less than 16 wide, as the demo's).
ONEDNN_CHANNEL_BLOCK = 16


def contiguous_for_onednn(conv: nn.Conv2d | nn.Conv3d, hidden_states: torch.Tensor) -> torch.memory_format | None:
    """
    The channels-last format of `hidden_states` where `conv` would hit the oneDNN bug above (a weight gradient of a
    strided 1x1 convolution with fewer than `ONEDNN_CHANNEL_BLOCK` input channels), else `None`. Such a convolution
    runs on the contiguous layout and its output goes back to that format.
    """
    if not (
        torch.is_grad_enabled()
        and hidden_states.device.type == "cpu"
        and conv.in_channels < ONEDNN_CHANNEL_BLOCK
        and max(conv.stride) > 1
        and all(size == 1 for size in conv.kernel_size)
    ):
        return None
    memory_format = torch.channels_last if hidden_states.ndim == 4 else torch.channels_last_3d
    if hidden_states.is_contiguous() or not hidden_states.is_contiguous(memory_format=memory_format):
        return None
    return memory_format


def convolve(
    conv: nn.Conv2d | nn.Conv3d,
    hidden_states: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`conv(hidden_states)`, with `weight` and `bias` in place of the module's where given, clear of the oneDNN bug."""
    memory_format = contiguous_for_onednn(conv, hidden_states)
    if memory_format is not None:
        hidden_states = hidden_states.contiguous()
    output = conv(hidden_states) if weight is None else conv._conv_forward(hidden_states, weight, bias)
    return output if memory_format is None else output.contiguous(memory_format=memory_format)


def conv_norm(
    conv: nn.Conv2d | nn.Conv3d,
    norm: nn.BatchNorm2d | nn.BatchNorm3d,
    hidden_states: torch.Tensor,
    fold: bool,
    conv_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    `batch_norm(norm, conv(hidden_states))` (with `conv_weight` in place of `conv.weight` where given: a checkpointed
    stem takes its weight as an argument). In eval with `fold`, one convolution with the BatchNorm folded into its
    weight and bias, computed from the current parameters and statistics on every call, so it can never go stale.
    """
    if not fold or norm.training:
        if conv_weight is None:
            return batch_norm(norm, convolve(conv, hidden_states))
        return batch_norm(norm, convolve(conv, hidden_states, conv_weight, conv.bias))
    weight = conv.weight if conv_weight is None else conv_weight
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    weight = weight * scale.view(-1, *([1] * (weight.ndim - 1)))
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return convolve(conv, hidden_states, weight, bias)


def checkpoints_stem(encoder: nn.Module) -> bool:
    # The stems use transformers' older mechanism (a `gradient_checkpointing` flag and `_gradient_checkpointing_func`
    # set by `activation_checkpointing_enable()`), which keeps their parameter names.
    return encoder.gradient_checkpointing and encoder.training and torch.is_grad_enabled()


class AVBertBottleneck(GradientCheckpointingLayer):
    """
    The bottleneck residual block of both CNNs, on 2D `(frequency, time)` maps (audio, `dims=2`) or 3D
    `(time, height, width)` maps (video, `dims=3`): a 1x1 convolution (`temporal_kernel_size` x 1 x 1 in 3D), a 3x3
    convolution over the last two axes that carries the block's `stride`, a 1x1 convolution, and a projection
    shortcut where the width or the size changes; a BatchNorm after every convolution. In a `separable` block the
    3x3 convolution is split into a 3x1 and a 1x3 one, each with its own norm and activation and each striding the
    axis it runs along. Checkpointable: `activation_checkpointing_enable()` recomputes its activations in the
    backward pass.
    """

    def __init__(
        self,
        config: AVBertConfig,
        dims: int,
        in_channels: int,
        bottleneck_channels: int,
        out_channels: int,
        stride: int,
        temporal_kernel_size: int = 1,
        separable: bool = False,
    ):
        super().__init__()
        if dims not in (2, 3) or (dims == 2 and temporal_kernel_size != 1):
            raise ValueError(f"A bottleneck block is 2D or 3D (with a temporal kernel only in 3D), got dims={dims}.")
        conv_class, norm_class = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
        leading = (1,) * (dims - 2)  # the time axis of 3D maps: only conv1 convolves along it, nothing strides it

        def conv(in_size: int, out_size: int, kernel: tuple[int, ...], strides: tuple[int, ...]) -> nn.Module:
            padding = tuple(size // 2 for size in kernel)
            return conv_class(in_size, out_size, kernel, stride=strides, padding=padding, bias=False)

        def norm(size: int) -> nn.Module:
            return norm_class(size, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)

        ones = (1,) * dims
        self.separable = separable
        self.conv1 = conv(in_channels, bottleneck_channels, (temporal_kernel_size,) * (dims - 2) + (1, 1), ones)
        self.bn1 = norm(bottleneck_channels)
        if separable:
            self.conv2_freq = conv(bottleneck_channels, bottleneck_channels, (*leading, 3, 1), (*leading, stride, 1))
            self.bn2_freq = norm(bottleneck_channels)
            self.conv2_time = conv(bottleneck_channels, bottleneck_channels, (*leading, 1, 3), (*leading, 1, stride))
            self.bn2_time = norm(bottleneck_channels)
        else:
            self.conv2 = conv(bottleneck_channels, bottleneck_channels, (*leading, 3, 3), (*leading, stride, stride))
            self.bn2 = norm(bottleneck_channels)
        self.conv3 = conv(bottleneck_channels, out_channels, ones, ones)
        self.bn3 = norm(out_channels)
        # The original's init: the last norm starts at zero scale (`zero_init_final_batch_norm`), so that the block
        # starts as an identity. `_init_weights` applies it (transformers initializes the norm itself, not the block).
        self.bn3.initial_scale = 0.0 if config.zero_init_final_batch_norm else 1.0
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if in_channels != out_channels or stride != 1:
            self.downsample = nn.Sequential(
                conv(in_channels, out_channels, ones, (*leading, stride, stride)), norm(out_channels)
            )

    def forward(self, hidden_states: torch.Tensor, fold_batch_norm: bool = False) -> torch.Tensor:
        fold = fold_batch_norm
        shortcut = hidden_states
        if self.downsample is not None:
            shortcut = conv_norm(self.downsample[0], self.downsample[1], hidden_states, fold)
        hidden_states = self.act(conv_norm(self.conv1, self.bn1, hidden_states, fold))
        if self.separable:
            hidden_states = self.act(conv_norm(self.conv2_freq, self.bn2_freq, hidden_states, fold))
            hidden_states = self.act(conv_norm(self.conv2_time, self.bn2_time, hidden_states, fold))
        else:
            hidden_states = self.act(conv_norm(self.conv2, self.bn2, hidden_states, fold))
        hidden_states = conv_norm(self.conv3, self.bn3, hidden_states, fold)
        # In place: the sum is the block's largest tensor, and a fresh one costs its page faults (eval 1.16-1.28x
        # faster, docs/performance.md). Neither the convolution's nor BatchNorm's backward needs this output.
        return self.act(hidden_states.add_(shortcut))


class AVBertStageLayout(NamedTuple):
    """One CNN stage: its number of blocks, the stride of its first block, and the shape of its blocks."""

    depth: int
    stride: int
    temporal_kernel_size: int = 1
    separable: bool = False


def make_stages(config: AVBertConfig, dims: int, stem_width: int, layouts: list[AVBertStageLayout]) -> nn.ModuleList:
    """
    The bottleneck stages of a CNN: stage k has bottleneck width `stem_width * 2**k` and output width four times
    that. Its first block takes the previous stage's width (the stem's for stage 0) and the stage's stride.
    """
    stages = []
    in_channels = stem_width
    for index, layout in enumerate(layouts):
        bottleneck_channels = stem_width * 2**index
        out_channels = 4 * bottleneck_channels
        blocks = [
            AVBertBottleneck(
                config,
                dims,
                in_channels if block == 0 else out_channels,
                bottleneck_channels,
                out_channels,
                layout.stride if block == 0 else 1,
                layout.temporal_kernel_size,
                layout.separable,
            )
            for block in range(layout.depth)
        ]
        stages.append(nn.Sequential(*blocks))
        in_channels = out_channels
    return nn.ModuleList(stages)


class AVBertCNNEncoder(nn.Module):
    """
    What the two CNN encoders share: a stem, then the bottleneck stages. The fast path is decided here and nowhere
    else, from the config on every forward (docs/performance.md): eval forwards (`cnn_fast_inference`, the default)
    run on channels-last activations (the subclass's `memory_format`; the stem converts, the convolutions keep the
    layout) with every BatchNorm folded into its convolution; training forwards run channels-last only with
    `cnn_channels_last_training`. Neither changes a parameter or the state dict.
    """

    memory_format: torch.memory_format
    gradient_checkpointing = False

    def __init__(self, config: AVBertConfig):
        super().__init__()
        self.config = config

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training:  # BatchNorm normalizes with the batch statistics: nothing to fold
            channels_last, fold_batch_norm = self.config.cnn_channels_last_training, False
        else:
            channels_last = fold_batch_norm = self.config.cnn_fast_inference
        if checkpoints_stem(self):
            # The whole stem, the input's channels-last copy included, is recomputed: of the stem only the caller's
            # input is kept (the copy and the first convolution's output are the largest activations of the model).
            # The weight goes in as an argument because reentrant checkpointing needs an input that requires grad.
            hidden_states = self._gradient_checkpointing_func(
                self.stem, inputs, self.first_conv.weight, channels_last, False
            )
        else:
            hidden_states = self.stem(inputs, None, channels_last, fold_batch_norm)
        for stage in self.stages:
            for block in stage:
                hidden_states = block(hidden_states, fold_batch_norm)
        return hidden_states

    @property
    def first_conv(self) -> nn.Conv2d | nn.Conv3d:
        """The stem's first convolution (the one that sees the input)."""
        raise NotImplementedError

    def stem(
        self, inputs: torch.Tensor, first_conv_weight: torch.Tensor | None, channels_last: bool, fold_batch_norm: bool
    ) -> torch.Tensor:
        """The stem; `first_conv_weight`, where given, stands in for `first_conv.weight` (the checkpointed stem's)."""
        raise NotImplementedError


class AVBertVisualEncoder(AVBertCNNEncoder):
    """
    3D ResNet (PySlowFast slow-only layout): a (5 x 7 x 7) stem with temporal stride 2 and a spatial max-pool, then
    bottleneck stages with temporal kernels only where `visual_temporal_kernel_sizes` asks for them.
    `(N, 3, T, H, W)` clips -> `(N, 4 * base * 2**(stages-1), T/2, H/32, W/32)` feature maps.
    """

    memory_format = torch.channels_last_3d

    def __init__(self, config: AVBertConfig):
        super().__init__(config)
        width = config.visual_base_width
        stem_kernel = config.visual_stem_temporal_kernel_size
        self.stem_conv = nn.Conv3d(
            config.num_channels,
            width,
            kernel_size=(stem_kernel, 7, 7),
            stride=(2, 2, 2),
            padding=(stem_kernel // 2, 3, 3),
            bias=False,
        )
        self.stem_bn = nn.BatchNorm3d(width, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.stem_act = nn.ReLU(inplace=True)
        self.stem_pool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        layouts = [
            AVBertStageLayout(depth, stride=1 if index == 0 else 2, temporal_kernel_size=temporal_kernel)
            for index, (depth, temporal_kernel) in enumerate(
                zip(config.visual_depths, config.visual_temporal_kernel_sizes, strict=True)
            )
        ]
        self.stages = make_stages(config, 3, width, layouts)

    @property
    def first_conv(self) -> nn.Conv3d:
        return self.stem_conv

    def stem(
        self, inputs: torch.Tensor, first_conv_weight: torch.Tensor | None, channels_last: bool, fold_batch_norm: bool
    ) -> torch.Tensor:
        if channels_last:
            inputs = inputs.contiguous(memory_format=self.memory_format)
        hidden_states = conv_norm(self.stem_conv, self.stem_bn, inputs, fold_batch_norm, first_conv_weight)
        return self.stem_pool(self.stem_act(hidden_states))


class AVBertAudioEncoder(AVBertCNNEncoder):
    """
    2D ResNet on log-mel spectrograms: a separable (9x1 then 1x9) stem without stride, then bottleneck stages that all
    halve both axes. `(N, 1, mel, time)` -> `(N, 4 * base * 2**(stages-1), mel/16, time/16)` feature maps.
    """

    memory_format = torch.channels_last

    def __init__(self, config: AVBertConfig):
        super().__init__(config)
        width = config.audio_base_width
        norm_kwargs = {"eps": config.batch_norm_eps, "momentum": config.batch_norm_momentum}
        self.stem_conv_freq = nn.Conv2d(1, width, kernel_size=(9, 1), padding=(4, 0), bias=False)
        self.stem_bn_freq = nn.BatchNorm2d(width, **norm_kwargs)
        self.stem_conv_time = nn.Conv2d(width, width, kernel_size=(1, 9), padding=(0, 4), bias=False)
        self.stem_bn_time = nn.BatchNorm2d(width, **norm_kwargs)
        self.stem_act = nn.ReLU(inplace=True)
        layouts = [
            AVBertStageLayout(depth, stride=2, separable=index < config.audio_num_separable_stages)
            for index, depth in enumerate(config.audio_depths)
        ]
        self.stages = make_stages(config, 2, width, layouts)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.stem_conv_freq

    def stem(
        self, inputs: torch.Tensor, first_conv_weight: torch.Tensor | None, channels_last: bool, fold_batch_norm: bool
    ) -> torch.Tensor:
        hidden_states = conv_norm(self.stem_conv_freq, self.stem_bn_freq, inputs, fold_batch_norm, first_conv_weight)
        hidden_states = self.stem_act(hidden_states)
        if channels_last:  # after the first convolution: a one-channel input has no distinct channels-last form
            hidden_states = hidden_states.contiguous(memory_format=self.memory_format)
        hidden_states = conv_norm(self.stem_conv_time, self.stem_bn_time, hidden_states, fold_batch_norm)
        return self.stem_act(hidden_states)


# ----------------------------------------------------------------------------------------------------------------
# Factorized, parameter-shared transformer
# ----------------------------------------------------------------------------------------------------------------


def skew_generator_init(size: int, scheme: str) -> torch.Tensor:
    """
    A skew-symmetric generator whose exponential is a block diagonal of 2x2 rotations. "cayley" draws the angles as
    tan(u/2) with u ~ U(0, pi/2) (the original's default), "henaff" draws them from U(-pi, pi).
    """
    num_blocks = size // 2
    if scheme == "cayley":
        angles = -torch.tan(torch.empty(num_blocks).uniform_(0, math.pi / 2) / 2)
    else:
        angles = torch.empty(num_blocks).uniform_(-math.pi, math.pi)
    generator = torch.zeros(size, size)
    rows = torch.arange(num_blocks) * 2
    generator[rows, rows + 1] = angles
    return generator - generator.T


class AVBertOrthogonal(nn.Module):
    """
    An `r x r` orthogonal matrix `base @ phi(U - U^T)` with `U` the strict upper triangle of the learned `generator`
    and `phi` the matrix exponential (`torch.linalg.matrix_exp`) or the Cayley map. It is derived from the generator
    in float64 (the closest match to the original's float32 Pade port) on every call with gradients; without
    gradients the result is kept until the generator or base change (tracked by their version counters), so it can
    never go stale.
    """

    def __init__(self, config: AVBertConfig):
        super().__init__()
        size = config.orthogonal_size
        self.orthogonal_map = config.orthogonal_map
        self.generator = nn.Parameter(torch.empty(size, size))
        self.register_buffer("base", torch.eye(size))
        self._cached: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    def _compute(self) -> torch.Tensor:
        upper = self.generator.double().triu(1)
        skew = upper - upper.mT
        if self.orthogonal_map == "matrix_exp":
            rotation = torch.linalg.matrix_exp(skew)
        else:
            identity = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device)
            rotation = torch.linalg.solve(identity + skew, identity - skew)
        return (self.base.double() @ rotation).to(self.generator.dtype)

    def forward(self) -> torch.Tensor:
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._compute()
        key = (
            self.generator.data_ptr(),
            self.generator._version,
            self.base.data_ptr(),
            self.base._version,
            self.generator.dtype,
        )
        if key != self._cache_key:
            self._cached, self._cache_key = self._compute(), key
        return self._cached


class AVBertFactorizedLinear(nn.Module):
    """
    `y = U (B_g^T normalize(V_g x)) + b`: a private `in -> r` map `V_g` (no bias), L2 normalization, a private
    orthogonal `r x r` matrix `B_g`, and an `r -> out` map `U` with bias that all modality groups share.
    """

    def __init__(self, config: AVBertConfig, in_features: int, out_features: int, num_groups: int):
        super().__init__()
        rank = config.orthogonal_size
        self.private = nn.ModuleList(nn.Linear(in_features, rank, bias=False) for _ in range(num_groups))
        self.rotations = nn.ModuleList(AVBertOrthogonal(config) for _ in range(num_groups))
        self.shared = nn.Linear(rank, out_features)

    def rotation(self, group: int) -> torch.Tensor:
        return self.rotations[group]()

    def forward(self, hidden_states: torch.Tensor, group: int, rotation: torch.Tensor | None) -> torch.Tensor:
        hidden_states = F.normalize(self.private[group](hidden_states), dim=-1)
        return self.shared(hidden_states @ rotation)


class AVBertLinear(nn.Linear):
    """A plain linear map shared by every modality group (`use_decomposition=False`)."""

    def rotation(self, group: int) -> None:
        return None

    def forward(self, hidden_states: torch.Tensor, group: int, rotation: None) -> torch.Tensor:
        return super().forward(hidden_states)


def make_projection(
    config: AVBertConfig, in_features: int, out_features: int, num_groups: int
) -> AVBertFactorizedLinear | AVBertLinear:
    if config.use_decomposition:
        return AVBertFactorizedLinear(config, in_features, out_features, num_groups)
    return AVBertLinear(in_features, out_features)


class AVBertLayerRotations(NamedTuple):
    """The orthogonal matrices of one layer's six projections for one modality group (all `None` without
    decomposition). Computed once per transformer pass and reused by every application of the layer."""

    query: torch.Tensor | None
    key: torch.Tensor | None
    value: torch.Tensor | None
    attention_output: torch.Tensor | None
    intermediate: torch.Tensor | None
    output: torch.Tensor | None


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class AVBertAttention(nn.Module):
    """Multi-head self-attention with a post-LN residual. As in ALBERT, the attention-probability dropout rate is also
    used on the output projection."""

    def __init__(self, config: AVBertConfig, num_groups: int):
        super().__init__()
        self.config = config
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        hidden = config.hidden_size
        self.query = make_projection(config, hidden, hidden, num_groups)
        self.key = make_projection(config, hidden, hidden, num_groups)
        self.value = make_projection(config, hidden, hidden, num_groups)
        self.output = make_projection(config, hidden, hidden, num_groups)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.layer_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, group: int, rotations: AVBertLayerRotations, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        heads_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.query(hidden_states, group, rotations.query).view(heads_shape).transpose(1, 2)
        key = self.key(hidden_states, group, rotations.key).view(heads_shape).transpose(1, 2)
        value = self.value(hidden_states, group, rotations.value).view(heads_shape).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        context, attention_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            is_causal=False,
            scaling=self.scaling,
            dropout=self.config.attention_probs_dropout_prob if self.training else 0.0,
            **kwargs,
        )
        context = context.reshape(*hidden_states.shape[:-1], -1)
        context = self.dropout(self.output(context, group, rotations.attention_output))
        return self.layer_norm(hidden_states + context), attention_weights


class AVBertLayer(GradientCheckpointingLayer):
    """Post-LN transformer layer (ALBERT style: no dropout after the feed-forward block)."""

    def __init__(self, config: AVBertConfig, num_groups: int):
        super().__init__()
        self.attention = AVBertAttention(config, num_groups)
        self.intermediate = make_projection(config, config.hidden_size, config.intermediate_size, num_groups)
        self.output = make_projection(config, config.intermediate_size, config.hidden_size, num_groups)
        self.activation = ACT2FN[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def rotations(self, group: int) -> AVBertLayerRotations:
        attention = self.attention
        return AVBertLayerRotations(
            query=attention.query.rotation(group),
            key=attention.key.rotation(group),
            value=attention.value.rotation(group),
            attention_output=attention.output.rotation(group),
            intermediate=self.intermediate.rotation(group),
            output=self.output.rotation(group),
        )

    def forward(
        self, hidden_states: torch.Tensor, group: int, *rotations: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`rotations` are the six matrices of [`AVBertLayerRotations`], passed one by one: reentrant gradient
        checkpointing sees (and returns gradients for) only tensors that are positional arguments of the layer. The
        group is positional too, so that a recomputation replays each application of the shared layer with its own."""
        rotations = AVBertLayerRotations(*rotations)
        attention_output, attention_weights = self.attention(hidden_states, group, rotations, **kwargs)
        feed_forward = self.activation(self.intermediate(attention_output, group, rotations.intermediate))
        feed_forward = self.output(feed_forward, group, rotations.output)
        return self.layer_norm(feed_forward + attention_output), attention_weights


class AVBertEncoder(nn.Module):
    """
    `num_hidden_layers` applications of one shared layer (`sharing_across_layers`) or of distinct layers. `group`
    selects the private factors (0 visual, 1 audio, 2 multimodal when one encoder serves every stage).
    """

    def __init__(self, config: AVBertConfig, num_groups: int):
        super().__init__()
        self.config = config
        num_layers = 1 if config.sharing_across_layers else config.num_hidden_layers
        self.layers = nn.ModuleList(AVBertLayer(config, num_groups) for _ in range(num_layers))

    def forward(
        self,
        hidden_states: torch.Tensor,
        group: int,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        **kwargs,
    ) -> BaseModelOutput:
        rotations = [layer.rotations(group) for layer in self.layers]
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for index in range(self.config.num_hidden_layers):
            layer_index = index % len(self.layers)
            hidden_states, attention_weights = self.layers[layer_index](
                hidden_states, group, *rotations[layer_index], output_attentions=output_attentions, **kwargs
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attention_weights,)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


class AVBertFeatureProjection(nn.Module):
    """Per-clip CNN features -> transformer width (linear + LayerNorm), with the modality's learned summary token
    prepended: `(B, S, feature_size)` -> `(B, 1 + S, hidden_size)`."""

    def __init__(self, config: AVBertConfig, feature_size: int):
        super().__init__()
        self.dense = nn.Linear(feature_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.summary_token = nn.Parameter(torch.empty(config.hidden_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.tokens_from_projected(self.dense(features))

    def tokens_from_projected(self, projected: torch.Tensor) -> torch.Tensor:
        """The second half of `forward`, for callers that also need `dense`'s output (pretraining's MEP targets)."""
        tokens = self.layer_norm(projected)
        summary = self.summary_token.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        return torch.cat([summary, tokens], dim=1)


class AVBertEmbeddings(nn.Module):
    """Learned positions (and, for the multimodal stage, modality token types), then LayerNorm and dropout."""

    def __init__(self, config: AVBertConfig, use_token_types: bool):
        super().__init__()
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if use_token_types else None
        )
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, tokens: torch.Tensor, position_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        embeddings = tokens + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.layer_norm(embeddings))


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def _weights_readable_as_other_files(folder: Path) -> None:
    """safetensors 0.8 creates its files with mode 0600 (a private temporary file, renamed), while every other file of
    the folder follows the umask (0644 by default): give the weights the umask's mode too, so that whoever may read the
    folder may load the model."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.glob("*.safetensors"):
        os.chmod(path, 0o666 & ~umask)


class AVBertPreTrainedModel(PreTrainedModel):
    config: AVBertConfig
    base_model_prefix = "avbert"
    main_input_name = "pixel_values"
    input_modalities = ("video", "audio")
    supports_gradient_checkpointing = True
    _no_split_modules = ["AVBertLayer", "AVBertBottleneck"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The original's initialization: MSRA (fan-out) convolutions, unit BatchNorm with a zero-scale last norm in
        every residual block, N(0, initializer_range) for every Linear and Embedding, and orthogonal generators whose
        exponential is a set of small 2x2 rotations."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
            # A block's last norm carries the scale its block starts it at (see `AVBertBottleneck`).
            init.constant_(module.weight, getattr(module, "initial_scale", 1.0))
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, AVBertOrthogonal):
            init.eye_(module.base)
            init.copy_(module.generator, skew_generator_init(module.generator.shape[0], self.config.orthogonal_init))
        elif isinstance(module, AVBertFeatureProjection):
            init.normal_(module.summary_token, std=std)
        elif isinstance(module, AVBertForPreTraining):
            init.normal_(module.visual_mask_token, std=std)
            init.normal_(module.audio_mask_token, std=std)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `trust_remote_code` loads a saved folder through AutoModel as well as through the saved head's Auto class
        # (`custom_object_save` adds only the latter to `auto_map`).
        if self._auto_class is not None:
            module = self.__class__.__module__.rsplit(".", 1)[-1]
            saved_map = getattr(self.config, "auto_map", None) or {}
            self.config.auto_map = {"AutoModel": f"{module}.AVBertModel", **saved_map}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            _weights_readable_as_other_files(Path(save_directory))
            write_model_card(save_directory, self)
            write_weight_checksums(save_directory)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        # A local folder's weights are checked against the checksums saved with them (hub downloads: by the hub).
        if pretrained_model_name_or_path is not None:
            folder = os.path.join(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
            if os.path.isdir(folder):
                verify_weight_checksums(folder)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        # Linear evaluation: the frozen backbone keeps its BatchNorm statistics and runs without dropout.
        if self.config.freeze_encoder and self.base_model is not self:
            self.base_model.eval()
        return self

    def freeze_encoder(self) -> None:
        """Freeze the backbone for linear evaluation: no gradients and eval mode for everything but the heads."""
        self.config.freeze_encoder = True
        self.base_model.requires_grad_(False)
        self.train(self.training)

    def _check_head_inputs(self, pixel_values: torch.Tensor | None, input_features: torch.Tensor | None) -> None:
        """The heads' one input check: every modality this model has an encoder for must be given."""
        name = type(self).__name__
        if self.config.use_visual and pixel_values is None:
            raise ValueError(f"{name} needs pixel_values (the video clips, e.g. from AVBertVideoProcessor).")
        if self.config.use_audio and input_features is None:
            raise ValueError(
                f"{name} has an audio branch (use_audio=True) and needs input_features, the log-mel of the sound "
                "under each clip, which these inputs lack: read the sound with the processor (AVBertProcessor, or the "
                "video processor with load_audio_in_video=True), or use a visual-only model (use_audio=False) for "
                "videos without sound."
            )

    def fuse_for_inference(self, fuse: bool = True) -> "AVBertPreTrainedModel":
        """
        Deprecated: the inference fast path is the default. `fuse_for_inference(fuse)` sets what it used to switch,
        `config.cnn_fast_inference` and `config.cnn_channels_last_training`, to `fuse` and returns the model.
        """
        warnings.warn(
            "fuse_for_inference() is deprecated: eval forwards fold BatchNorm and run channels-last by default; set "
            "model.config.cnn_fast_inference = False for the plain path (docs/performance.md).",
            FutureWarning,
            stacklevel=2,
        )
        self.config.cnn_fast_inference = self.config.cnn_channels_last_training = fuse
        return self

    def set_channels_last(self, enabled: bool = True) -> "AVBertPreTrainedModel":
        """
        Deprecated: `set_channels_last(enabled)` sets `config.cnn_channels_last_training = enabled` (eval forwards
        are channels-last by default, with `config.cnn_fast_inference`) and returns the model.
        """
        warnings.warn(
            "set_channels_last() is deprecated: set model.config.cnn_channels_last_training for training forwards; "
            "eval forwards run channels-last by default (model.config.cnn_fast_inference).",
            FutureWarning,
            stacklevel=2,
        )
        self.config.cnn_channels_last_training = enabled
        return self


def _check_clip_tensor(name: str, tensor: torch.Tensor, ndim: int, layout: str) -> None:
    if not torch.is_tensor(tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(tensor).__name__}.")
    if tensor.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout} ({ndim} dims), got {tuple(tensor.shape)}.")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}.")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)}, an empty batch or zero clips per video: {layout} needs "
            "batch >= 1 and num_clips >= 1."
        )


class AVBertModel(AVBertPreTrainedModel):
    """
    The AVBERT backbone. Each clip goes through its modality's CNN and is pooled to one feature; the per-clip features
    are projected to the transformer width, a summary token is prepended per modality, and the shared transformer
    runs the stages the fusion mode asks for (mid: visual, audio, then multimodal over
    `[summary_v, v_1..v_S, summary_a, a_1..a_S]` with positions restarting per modality and token types 0/1).
    """

    # The backbone of a classifier or pretraining folder (`AutoModel.from_pretrained`): their heads are not the
    # backbone's, and are left out without a load-report line each.
    _keys_to_ignore_on_load_unexpected = [
        r"^(clip_head|sequence_head|visual_prediction_head|audio_prediction_head|multimodal_prediction_head|pair_head)\.",
    ]

    def __init__(self, config: AVBertConfig):
        super().__init__(config)
        self.visual_encoder = AVBertVisualEncoder(config) if config.use_visual else None
        self.audio_encoder = AVBertAudioEncoder(config) if config.use_audio else None

        stages = config.transformer_stages
        use_transformer = bool(stages)
        self.visual_projection = (
            AVBertFeatureProjection(config, config.visual_feature_size)
            if use_transformer and config.use_visual
            else None
        )
        self.audio_projection = (
            AVBertFeatureProjection(config, config.audio_feature_size) if use_transformer and config.use_audio else None
        )
        self.visual_embeddings = AVBertEmbeddings(config, use_token_types=False) if "visual" in stages else None
        self.audio_embeddings = AVBertEmbeddings(config, use_token_types=False) if "audio" in stages else None
        self.multimodal_embeddings = AVBertEmbeddings(config, use_token_types=True) if "multimodal" in stages else None

        # One encoder with a private group per stage, or one encoder per stage with a single group each.
        self.transformer = None
        self.visual_transformer = self.audio_transformer = self.multimodal_transformer = None
        if use_transformer and config.sharing_across_models:
            self.transformer = AVBertEncoder(config, num_groups=len(stages))
        elif use_transformer:
            if "visual" in stages:
                self.visual_transformer = AVBertEncoder(config, num_groups=1)
            if "audio" in stages:
                self.audio_transformer = AVBertEncoder(config, num_groups=1)
            if "multimodal" in stages:
                self.multimodal_transformer = AVBertEncoder(config, num_groups=1)
        self.post_init()

    def _run_stage(self, stage: str, embeddings: torch.Tensor, **kwargs) -> BaseModelOutput:
        if self.transformer is not None:
            return self.transformer(embeddings, self.config.transformer_stages.index(stage), **kwargs)
        encoder = {
            "visual": self.visual_transformer,
            "audio": self.audio_transformer,
            "multimodal": self.multimodal_transformer,
        }[stage]
        return encoder(embeddings, 0, **kwargs)

    def get_clip_features(
        self, pixel_values: torch.Tensor | None = None, input_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Globally pooled CNN features `(batch, num_clips, feature_size)` of each given modality."""
        if pixel_values is None and input_features is None:
            raise ValueError("AVBertModel needs pixel_values, input_features, or both.")
        visual_features = audio_features = None
        if pixel_values is not None:
            if self.visual_encoder is None:
                raise ValueError("This AVBERT model has no visual encoder (use_visual=False) but got pixel_values.")
            _check_clip_tensor("pixel_values", pixel_values, 6, "(batch, num_clips, channels, frames, height, width)")
            # Float inputs run in the weights' dtype, as ViTModel casts its pixel_values: the processors return
            # float32, so a model loaded with dtype=torch.bfloat16 takes their output as it is.
            pixel_values = pixel_values.to(self.dtype)
            batch, clips = pixel_values.shape[:2]
            feature_map = self.visual_encoder(pixel_values.flatten(0, 1))
            visual_features = feature_map.mean(dim=(2, 3, 4)).view(batch, clips, -1)
        if input_features is not None:
            if self.audio_encoder is None:
                raise ValueError("This AVBERT model has no audio encoder (use_audio=False) but got input_features.")
            _check_clip_tensor("input_features", input_features, 5, "(batch, num_clips, 1, mel_bins, time)")
            input_features = input_features.to(self.dtype)
            batch, clips = input_features.shape[:2]
            feature_map = self.audio_encoder(input_features.flatten(0, 1))
            audio_features = feature_map.mean(dim=(2, 3)).view(batch, clips, -1)
        both = visual_features is not None and audio_features is not None
        if both and visual_features.shape[:2] != audio_features.shape[:2]:
            raise ValueError(
                "pixel_values and input_features must have the same (batch, num_clips), got "
                f"{tuple(pixel_values.shape[:2])} and {tuple(input_features.shape[:2])}."
            )
        return visual_features, audio_features

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> AVBertModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_clips, num_channels, num_frames, height, width)`):
            Normalized video clips, e.g. from [`AVBertVideoProcessor`].
        input_features (`torch.FloatTensor` of shape `(batch_size, num_clips, 1, num_mel_bins, time)`):
            Log-mel spectrogram of the sound under each clip, e.g. from [`AVBertFeatureExtractor`].
        Either input may be omitted; the stages of the missing modality are skipped.
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        visual_features, audio_features = self.get_clip_features(pixel_values, input_features)
        stages = self.config.transformer_stages
        if not stages:
            return AVBertModelOutput(visual_features=visual_features, audio_features=audio_features)

        visual_tokens = self.visual_projection(visual_features) if visual_features is not None else None
        audio_tokens = self.audio_projection(audio_features) if audio_features is not None else None
        output = self.encode_tokens(
            visual_tokens,
            audio_tokens,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        # A fresh output keeps the fields in declaration order (last_hidden_state first in tuples).
        # The summary tokens of the last stage sit at the start of each modality's `1 + num_clips` positions.
        sequence_length = (visual_tokens if visual_tokens is not None else audio_tokens).shape[1]
        summary_outputs = output.last_hidden_state[:, ::sequence_length]
        return AVBertModelOutput(
            **{
                **output,
                "pooler_output": summary_outputs.mean(dim=1),
                "visual_features": visual_features,
                "audio_features": audio_features,
            }
        )

    @can_return_tuple
    def get_video_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        r"""
        Video embeddings for retrieval and probing, in the manner of CLIP's `get_image_features`: the visual stage
        alone (no sound needed).

        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_clips, num_channels, num_frames, height, width)`):
            Normalized video clips.

        Returns a `BaseModelOutputWithPooling`: `pooler_output` `(batch_size, hidden_size)` is the visual summary
        token's output and `last_hidden_state` `(batch_size, 1 + num_clips, hidden_size)` the visual stage's
        sequence; `hidden_states` / `attentions` as for [`AVBertModel`]. Without a visual transformer stage (CNN-only
        models, early fusion) `last_hidden_state` is the per-clip CNN features and `pooler_output` their mean.
        """
        return self._single_modality_features("visual", pixel_values=pixel_values, **kwargs)

    @can_return_tuple
    def get_audio_features(self, input_features: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        r"""
        Audio embeddings for retrieval and probing: the audio stage alone, as [`~AVBertModel.get_video_features`]
        for the visual one.

        input_features (`torch.FloatTensor` of shape `(batch_size, num_clips, 1, num_mel_bins, time)`):
            Log-mel spectrograms of the clips.
        """
        return self._single_modality_features("audio", input_features=input_features, **kwargs)

    def _single_modality_features(
        self, modality: str, output_attentions: bool | None = None, output_hidden_states: bool | None = None, **inputs
    ) -> BaseModelOutputWithPooling:
        visual_features, audio_features = self.get_clip_features(**inputs)
        features = visual_features if modality == "visual" else audio_features
        if modality not in self.config.transformer_stages:
            return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=features.mean(dim=1))
        projection = self.visual_projection if modality == "visual" else self.audio_projection
        tokens = projection(features)
        output = self.encode_tokens(
            tokens if modality == "visual" else None,
            tokens if modality == "audio" else None,
            output_attentions=self.config.output_attentions if output_attentions is None else output_attentions,
            output_hidden_states=(
                self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
            ),
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=output.last_hidden_state,
            pooler_output=output.last_hidden_state[:, 0],
            hidden_states=output.hidden_states,
            attentions=output.attentions,
        )

    def encode_tokens(
        self,
        visual_tokens: torch.Tensor | None,
        audio_tokens: torch.Tensor | None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> AVBertModelOutput:
        """
        The transformer stages on projected clip tokens `(batch, 1 + clips, hidden)` (summary token first), as
        returned by `visual_projection` / `audio_projection`: pretraining masks some of them before calling this.
        """
        stages = self.config.transformer_stages
        reference = visual_tokens if visual_tokens is not None else audio_tokens
        num_clips = reference.shape[1] - 1
        if num_clips + 1 > self.config.max_position_embeddings:
            raise ValueError(
                f"Got {num_clips} clips per video, but max_position_embeddings={self.config.max_position_embeddings} "
                f"allows at most {self.config.max_position_embeddings - 1}."
            )
        device = reference.device
        positions = torch.arange(num_clips + 1, device=device).unsqueeze(0)
        stage_kwargs = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions, **kwargs}

        visual = audio = None
        if "visual" in stages and visual_tokens is not None:
            visual = self._run_stage("visual", self.visual_embeddings(visual_tokens, positions), **stage_kwargs)
            visual_tokens = visual.last_hidden_state
        if "audio" in stages and audio_tokens is not None:
            audio = self._run_stage("audio", self.audio_embeddings(audio_tokens, positions), **stage_kwargs)
            audio_tokens = audio.last_hidden_state

        if visual_tokens is not None and audio_tokens is not None:
            tokens = torch.cat([visual_tokens, audio_tokens], dim=1)
            if "multimodal" in stages:
                token_types = torch.arange(2, device=device).repeat_interleave(num_clips + 1).unsqueeze(0)
                embeddings = self.multimodal_embeddings(tokens, positions.repeat(1, 2), token_types)
                last = self._run_stage("multimodal", embeddings, **stage_kwargs)
            else:  # late fusion: the two single-modality sequences side by side
                last = BaseModelOutput(last_hidden_state=tokens)
        elif "multimodal" in stages and not ("visual" in stages or "audio" in stages):
            raise ValueError("Early fusion runs one multimodal stage and needs both pixel_values and input_features.")
        else:
            last = visual if visual is not None else audio

        return AVBertModelOutput(
            last_hidden_state=last.last_hidden_state,
            visual_last_hidden_state=visual.last_hidden_state if visual is not None else None,
            audio_last_hidden_state=audio.last_hidden_state if audio is not None else None,
            hidden_states=last.hidden_states,
            attentions=last.attentions,
            visual_hidden_states=visual.hidden_states if visual is not None else None,
            visual_attentions=visual.attentions if visual is not None else None,
            audio_hidden_states=audio.hidden_states if audio is not None else None,
            audio_attentions=audio.attentions if audio is not None else None,
        )


class AVBertClipHead(nn.Module):
    """Dropout and a linear classifier on the concatenated CNN features of each clip."""

    def __init__(self, config: AVBertConfig, in_features: int):
        super().__init__()
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(in_features, config.num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))


class AVBertSequenceHead(nn.Module):
    """
    Per-clip classifier on the transformer output: for each modality, `[summary output || token t output]` goes
    through a bias-free linear map; the maps are summed, layer-normalized and classified.
    """

    def __init__(self, config: AVBertConfig):
        super().__init__()
        hidden = config.hidden_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.visual_dense = nn.Linear(2 * hidden, hidden, bias=False) if config.use_visual else None
        self.audio_dense = nn.Linear(2 * hidden, hidden, bias=False) if config.use_audio else None
        self.layer_norm = nn.LayerNorm(hidden, eps=config.head_layer_norm_eps)
        self.classifier = nn.Linear(hidden, config.num_labels)

    @staticmethod
    def _summary_token_pairs(sequence: torch.Tensor) -> torch.Tensor:
        """`[summary, x_1..x_S]` -> `(B, S, 2H)` rows `[summary || x_t]`."""
        summary = sequence[:, :1].expand(-1, sequence.shape[1] - 1, -1)
        return torch.cat([summary, sequence[:, 1:]], dim=-1)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        dense_layers = [layer for layer in (self.visual_dense, self.audio_dense) if layer is not None]
        parts = sequence_output.chunk(len(dense_layers), dim=1)
        hidden = sum(
            dense(self.dropout(self._summary_token_pairs(part)))
            for dense, part in zip(dense_layers, parts, strict=True)
        )
        return self.classifier(self.layer_norm(hidden))


class AVBertClassifierMixin:
    """Loss and whole-video scores shared by the AVBERT classifiers."""

    config: AVBertConfig

    def _video_logits(self, *clip_level_logits: torch.Tensor) -> torch.Tensor:
        """Average the heads' per-clip predictions into `(batch, num_labels)` logits."""
        stacked = torch.cat(clip_level_logits, dim=1)  # (B, heads * S, C)
        problem_type = self.config.problem_type
        if problem_type == "single_label_classification" or (problem_type is None and self.config.num_labels > 1):
            # log of the mean softmax: softmax(logits) is the original's averaged test score.
            return stacked.log_softmax(dim=-1).logsumexp(dim=1) - math.log(stacked.shape[1])
        return stacked.mean(dim=1)

    def _clip_loss(self, clip_level_logits: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        """Loss of every clip against its video's label, averaged over clips (the original's per-clip rows)."""
        num_clips = clip_level_logits.shape[1]
        flat_logits = clip_level_logits.flatten(0, 1)
        flat_labels = labels.repeat_interleave(num_clips, dim=0)
        num_items = kwargs.pop("num_items_in_batch", None)
        if num_items is not None:  # the Trainer counts videos; the loss is a mean over clips
            num_items = num_items * num_clips
        if self.config.classifier_loss == "multi_margin":
            loss = F.multi_margin_loss(
                flat_logits, flat_labels.to(flat_logits.device), margin=self.config.multi_margin_margin, reduction="sum"
            )
            return loss / (num_items if num_items is not None else flat_labels.shape[0])
        return self.loss_function(
            labels=flat_labels, pooled_logits=flat_logits, config=self.config, num_items_in_batch=num_items, **kwargs
        )


class AVBertForVideoClassification(AVBertClassifierMixin, AVBertPreTrainedModel):
    """
    AVBERT video classifier. With a transformer (Kinetics-Sounds recipe) it has two heads, a clip head on the
    concatenated CNN features and a sequence head on the transformer output; without one (UCF101 recipe) only the
    clip head on the visual CNN features.
    """

    def __init__(self, config: AVBertConfig):
        super().__init__(config)
        self.avbert = AVBertModel(config)
        clip_features = config.visual_feature_size * config.use_visual + config.audio_feature_size * config.use_audio
        self.clip_head = AVBertClipHead(config, clip_features)
        self.sequence_head = AVBertSequenceHead(config) if config.use_transformer else None
        self.post_init()
        if config.freeze_encoder:
            self.freeze_encoder()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> AVBertClassifierOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_clips, num_channels, num_frames, height, width)`):
            Normalized video clips.
        input_features (`torch.FloatTensor` of shape `(batch_size, num_clips, 1, num_mel_bins, time)`):
            Log-mel spectrograms of the clips' sound; required when the model has an audio encoder.
        labels (`torch.LongTensor` of shape `(batch_size,)`):
            One label per video; every clip is trained against it.
        """
        self._check_head_inputs(pixel_values, input_features)
        outputs = self.avbert(
            pixel_values=pixel_values,
            input_features=input_features,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        clip_features = [f for f in (outputs.visual_features, outputs.audio_features) if f is not None]
        clip_logits = self.clip_head(torch.cat(clip_features, dim=-1))
        sequence_logits = None
        if self.sequence_head is not None:
            sequence_logits = self.sequence_head(outputs.last_hidden_state)
        heads = [clip_logits] if sequence_logits is None else [clip_logits, sequence_logits]

        loss = None
        if labels is not None:
            loss = sum(self._clip_loss(head_logits, labels, **kwargs) for head_logits in heads)
        return AVBertClassifierOutput(
            loss=loss,
            logits=self._video_logits(*heads),
            clip_logits=clip_logits,
            sequence_logits=sequence_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class AVBertForAudioClassification(AVBertClassifierMixin, AVBertPreTrainedModel):
    """AVBERT audio classifier (ESC-50 recipe): a linear head on the pooled audio CNN feature of every clip."""

    main_input_name = "input_features"
    input_modalities = ("audio",)
    # An audio-visual checkpoint's visual encoder, transformer and sequence head have no place in this audio-only
    # model: they are dropped without a line each in the load report.
    _keys_to_ignore_on_load_unexpected = [
        r"^avbert\.(visual_|multimodal_|transformer\.|audio_projection\.|audio_embeddings\.|audio_transformer\.)",
        r"^sequence_head\.",
    ]

    def __init__(self, config: AVBertConfig):
        if not config.use_audio:
            raise ValueError("AVBertForAudioClassification needs an audio encoder (use_audio=True).")
        if config.use_visual or config.use_transformer:
            # Only the audio CNN feeds this head: building the rest would hold unused weights (and break DDP, which
            # expects every parameter to get a gradient). Loading an audio-visual checkpoint reports them as unused.
            config = copy.deepcopy(config)
            config.use_transformer = False
            config.use_visual = False
        super().__init__(config)
        self.avbert = AVBertModel(config)
        self.clip_head = AVBertClipHead(config, config.audio_feature_size)
        self.post_init()
        if config.freeze_encoder:
            self.freeze_encoder()

    @can_return_tuple
    def forward(
        self,
        input_features: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> AVBertClassifierOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, num_clips, 1, num_mel_bins, time)`):
            Log-mel spectrograms of the clips.
        labels (`torch.LongTensor` of shape `(batch_size,)`):
            One label per recording; every clip is trained against it.
        """
        self._check_head_inputs(None, input_features)
        _, audio_features = self.avbert.get_clip_features(input_features=input_features)
        clip_logits = self.clip_head(audio_features)
        loss = self._clip_loss(clip_logits, labels, **kwargs) if labels is not None else None
        return AVBertClassifierOutput(loss=loss, logits=self._video_logits(clip_logits), clip_logits=clip_logits)

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        super()._adjust_missing_and_unexpected_keys(loading_info)
        # The clip head of an audio-visual checkpoint classifies [visual, audio] features (a wider input than here):
        # it starts anew, reported as newly initialized, instead of failing the load as a size mismatch.
        classifier = self.clip_head.classifier
        wider = {key for key in loading_info.mismatched_keys if key[0] == "clip_head.classifier.weight"}
        if any(key[1][-1] != key[2][-1] for key in wider):
            loading_info.mismatched_keys -= wider
            loading_info.missing_keys |= {"clip_head.classifier.weight", "clip_head.classifier.bias"}
            init.normal_(classifier.weight, std=self.config.initializer_range)
            init.zeros_(classifier.bias)


# ----------------------------------------------------------------------------------------------------------------
# Self-supervised pretraining (not in the original repository; from the paper, choices in docs/pretraining.md)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class AVBertForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        `mep_loss_weight * (visual + audio + multimodal masked-embedding losses) + pair_loss_weight * pair_loss`.
    visual_mep_loss, audio_mep_loss, multimodal_mep_loss (`torch.FloatTensor` of shape `()`):
        InfoNCE losses of masked embedding prediction in each stage.
    pair_loss (`torch.FloatTensor` of shape `()`):
        Cross-entropy of correct pair prediction (are this picture and this sound from the same video).
    pair_logits (`torch.FloatTensor` of shape `(batch_size, 2)`), pair_labels (`torch.LongTensor` of `(batch_size,)`):
        Scores and targets of correct pair prediction (1 = the sound belongs to the video).
    visual_mask, audio_mask (`torch.LongTensor` of shape `(batch_size, num_clips)`):
        1 at the masked clip positions, 0 elsewhere (the audio mask in the order of the swapped sound tracks).
    hidden_states, attentions:
        As in [`AVBertModelOutput`] (the multimodal stage), returned when `output_hidden_states` /
        `output_attentions` are set.
    """

    loss: torch.FloatTensor | None = None
    visual_mep_loss: torch.FloatTensor | None = None
    audio_mep_loss: torch.FloatTensor | None = None
    multimodal_mep_loss: torch.FloatTensor | None = None
    pair_loss: torch.FloatTensor | None = None
    pair_logits: torch.FloatTensor | None = None
    pair_labels: torch.LongTensor | None = None
    visual_mask: torch.LongTensor | None = None
    audio_mask: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def sample_clip_mask(
    batch_size: int, num_clips: int, ratio: float, device: torch.device | None = None, generator=None
) -> torch.Tensor:
    """Exactly `max(1, round(ratio * num_clips))` clip positions per sequence, chosen uniformly at random."""
    count = max(1, round(ratio * num_clips))
    ranks = torch.rand(batch_size, num_clips, device=device, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks < count


def sample_pair_labels(
    batch_size: int, negative_ratio: float, device: torch.device | None = None, generator=None
) -> torch.Tensor:
    """1 (keep the video's own sound track) or 0 (swap it in) per video, 0 with probability `negative_ratio`; a batch
    of one video has no other sound track, so it is always 1."""
    labels = (torch.rand(batch_size, device=device, generator=generator) >= negative_ratio).long()
    return labels if batch_size > 1 else torch.ones_like(labels)


def anchor_distances(embeddings: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(num_anchors, num_candidates)` L2 distances between the (detached) CNN embeddings of each anchor and every
    candidate clip, and the mask of each anchor's own position: the one metric every sampling strategy uses."""
    embeddings = embeddings.detach().float()
    distance = torch.cdist(embeddings[anchors], embeddings)
    is_anchor = torch.zeros_like(distance, dtype=torch.bool)
    is_anchor[torch.arange(len(anchors), device=anchors.device), anchors] = True
    return distance, is_anchor


def negative_sampling_probabilities(
    embeddings: torch.Tensor, anchors: torch.Tensor, strategy: str, outlier_quantile: float
) -> torch.Tensor:
    """
    `(num_anchors, num_candidates)` probabilities of drawing each candidate clip as a negative for each anchor (never
    the anchor itself). Content-aware negative sampling, as the paper describes it: L2 distances between CNN
    embeddings; candidates outside the `[outlier_quantile, 1 - outlier_quantile]` quantiles of each anchor's distances
    are dropped (near-duplicates and far-off clips); the distances of the rest are rescaled to [0, 1] and candidates
    are drawn proportionally to their similarity `1 - d` ("cans") or dissimilarity `d` ("easy"). "random" is uniform
    over all candidates.
    """
    distance, is_anchor = anchor_distances(embeddings, anchors)
    if strategy == "random":
        weights = torch.ones_like(distance)
    else:
        masked = distance.masked_fill(is_anchor, float("nan"))
        low = masked.nanquantile(outlier_quantile, dim=1, keepdim=True)
        high = masked.nanquantile(1 - outlier_quantile, dim=1, keepdim=True)
        kept = (distance >= low) & (distance <= high)
        rescaled = ((distance - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
        weights = (1 - rescaled if strategy == "cans" else rescaled) * kept
    weights = weights.masked_fill(is_anchor, 0.0)
    # A row without weight (e.g. every kept candidate at the same distance) falls back to uniform.
    empty = weights.sum(dim=1, keepdim=True) <= 0
    weights = torch.where(empty, (~is_anchor).float(), weights)
    return weights / weights.sum(dim=1, keepdim=True)


def sample_negatives(
    embeddings: torch.Tensor,
    anchors: torch.Tensor,
    num_negatives: int,
    strategy: str,
    outlier_quantile: float,
    generator=None,
) -> torch.Tensor:
    """`(num_anchors, num_negatives)` candidate indices: the nearest ones in L2 distance ("hard") or drawn by
    [`negative_sampling_probabilities`] (without replacement while enough candidates have weight)."""
    if strategy == "hard":
        distance, is_anchor = anchor_distances(embeddings, anchors)
        to_others = distance.masked_fill(is_anchor, float("inf"))
        return to_others.topk(min(num_negatives, embeddings.shape[0] - 1), dim=1, largest=False).indices
    probabilities = negative_sampling_probabilities(embeddings, anchors, strategy, outlier_quantile)
    replacement = num_negatives > int((probabilities > 0).sum(dim=1).min())
    return torch.multinomial(probabilities, num_negatives, replacement=replacement, generator=generator)


def masked_embedding_loss(
    predictions: torch.Tensor, targets: torch.Tensor, anchors: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE: each prediction must score its own target above its sampled negatives (dot products)."""
    candidates = torch.cat([anchors[:, None], negatives], dim=1)
    scores = torch.einsum("nh,nkh->nk", predictions, targets[candidates]) / temperature
    return F.cross_entropy(scores, torch.zeros(len(anchors), dtype=torch.long, device=scores.device))


class AVBertPredictionHead(nn.Module):
    """FFN(o_t) of the paper: maps a transformer output to the space of the projected CNN embeddings."""

    def __init__(self, config: AVBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output(self.layer_norm(self.activation(self.dense(hidden_states))))


class AVBertForPreTraining(AVBertPreTrainedModel):
    """
    Self-supervised pretraining of the whole model (CNNs, projections, transformer) as described in the paper:

    - masked embedding prediction: `mask_ratio` of the clip tokens of each modality are replaced by a learned mask
      token before the transformer; in the visual, audio and multimodal stages the output at a masked position must
      pick out the linear projection of that clip's CNN embedding (the paper's `W_I x_t`, before the LayerNorm that
      feeds the transformer) among `num_negatives` negatives of the same modality (InfoNCE), drawn from the batch by
      content-aware negative sampling;
    - correct pair prediction: for `pair_negative_ratio` of the videos the sound track is swapped with another
      video's, and a classifier on the two summary outputs of the multimodal stage tells matched from swapped pairs.

    `AVBertForVideoClassification.from_pretrained` / `AVBertForAudioClassification.from_pretrained` on a saved
    pretraining run keep the encoders and the transformer and start new heads.
    """

    # The losses are means over masked positions and videos: let the Trainer scale them for gradient accumulation.
    accepts_loss_kwargs = False

    def __init__(self, config: AVBertConfig):
        super().__init__(config)
        if not (config.use_visual and config.use_audio and config.use_transformer and config.fusion == "mid"):
            raise ValueError("AVBertForPreTraining needs both modalities, the transformer and mid fusion.")
        self.avbert = AVBertModel(config)
        self.visual_mask_token = nn.Parameter(torch.empty(config.hidden_size))
        self.audio_mask_token = nn.Parameter(torch.empty(config.hidden_size))
        self.visual_prediction_head = AVBertPredictionHead(config)
        self.audio_prediction_head = AVBertPredictionHead(config)
        self.multimodal_prediction_head = AVBertPredictionHead(config)
        self.pair_head = nn.Sequential(
            nn.Linear(2 * config.hidden_size, config.hidden_size), nn.Tanh(), nn.Linear(config.hidden_size, 2)
        )
        self.post_init()

    def _stage_loss(
        self,
        head: AVBertPredictionHead,
        outputs: torch.Tensor,
        mask: torch.Tensor,
        targets: torch.Tensor,
        embeddings: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """InfoNCE over the masked clips of one modality; candidates are all that modality's clips in the batch."""
        anchors = mask.flatten().nonzero().squeeze(1)
        if anchors.numel() == 0:  # e.g. the multimodal stage when every pair of the batch was swapped
            return outputs.sum() * 0.0
        negatives = sample_negatives(
            embeddings,
            anchors,
            self.config.num_negatives,
            self.config.negative_sampling,
            self.config.cans_outlier_quantile,
            generator,
        )
        predictions = head(outputs[mask])
        return masked_embedding_loss(
            predictions, targets.flatten(0, 1), anchors, negatives, self.config.contrastive_temperature
        )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        visual_mask: torch.BoolTensor | None = None,
        audio_mask: torch.BoolTensor | None = None,
        pair_labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> AVBertForPreTrainingOutput:
        r"""
        pixel_values, input_features:
            As for [`AVBertModel`]; both are required.
        visual_mask, audio_mask (`torch.BoolTensor` of shape `(batch_size, num_clips)`, *optional*):
            Clip positions to mask; drawn with `mask_ratio` when omitted.
        pair_labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            1 keeps a video's own sound track, 0 swaps it with the next video's (in batch order); drawn with
            `pair_negative_ratio` when omitted.

        In training mode the omitted masks and pair labels and the negatives are drawn from torch's global generator;
        in eval mode from one seeded afresh on every call, so evaluation losses are reproducible.
        """
        self._check_head_inputs(pixel_values, input_features)
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        visual_features, audio_features = self.avbert.get_clip_features(pixel_values, input_features)
        batch_size, num_clips = visual_features.shape[:2]
        device = visual_features.device
        generator = None if self.training else torch.Generator(device).manual_seed(0)
        if visual_mask is None:
            visual_mask = sample_clip_mask(batch_size, num_clips, config.mask_ratio, device, generator)
        if audio_mask is None:
            audio_mask = sample_clip_mask(batch_size, num_clips, config.mask_ratio, device, generator)
        if pair_labels is None:
            pair_labels = sample_pair_labels(batch_size, config.pair_negative_ratio, device, generator)
        visual_mask, audio_mask = visual_mask.bool(), audio_mask.bool()
        order = torch.arange(batch_size, device=device)
        audio_order = torch.where(pair_labels.bool(), order, (order + 1) % batch_size)

        # Swapping the sound tracks before the audio stage is the same as after it (clips do not see other videos).
        audio_features, audio_mask = audio_features[audio_order], audio_mask[audio_order]
        # The targets are `W_I x_t` before the LayerNorm: a component common to all clips then adds the same score to
        # the positive and the negatives and cancels in the softmax. After the LayerNorm it would not: such a
        # component, once it grows (it does early on), squeezes every target to nearly the same vector
        # (docs/pretraining.md), and the losses stay at chance.
        visual_targets = self.avbert.visual_projection.dense(visual_features)
        audio_targets = self.avbert.audio_projection.dense(audio_features)
        visual_tokens = self.avbert.visual_projection.tokens_from_projected(visual_targets)
        audio_tokens = self.avbert.audio_projection.tokens_from_projected(audio_targets)
        masked_visual = torch.where(
            visual_mask[..., None], self.visual_mask_token.to(visual_tokens.dtype), visual_tokens[:, 1:]
        )
        masked_audio = torch.where(
            audio_mask[..., None], self.audio_mask_token.to(audio_tokens.dtype), audio_tokens[:, 1:]
        )
        outputs = self.avbert.encode_tokens(
            torch.cat([visual_tokens[:, :1], masked_visual], dim=1),
            torch.cat([audio_tokens[:, :1], masked_audio], dim=1),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )

        flat_visual, flat_audio = visual_features.flatten(0, 1), audio_features.flatten(0, 1)
        visual_loss = self._stage_loss(
            self.visual_prediction_head,
            outputs.visual_last_hidden_state[:, 1:],
            visual_mask,
            visual_targets,
            flat_visual,
            generator,
        )
        audio_loss = self._stage_loss(
            self.audio_prediction_head,
            outputs.audio_last_hidden_state[:, 1:],
            audio_mask,
            audio_targets,
            flat_audio,
            generator,
        )
        # In the multimodal stage only matched pairs predict their masked clips (a swapped sound track is no context).
        matched = pair_labels.bool()[:, None]
        multimodal = outputs.last_hidden_state
        multimodal_loss = self._stage_loss(
            self.multimodal_prediction_head,
            multimodal[:, 1 : num_clips + 1],
            visual_mask & matched,
            visual_targets,
            flat_visual,
            generator,
        ) + self._stage_loss(
            self.multimodal_prediction_head,
            multimodal[:, num_clips + 2 :],
            audio_mask & matched,
            audio_targets,
            flat_audio,
            generator,
        )
        multimodal_loss = multimodal_loss / 2
        pair_logits = self.pair_head(torch.cat([multimodal[:, 0], multimodal[:, num_clips + 1]], dim=-1))
        pair_loss = F.cross_entropy(pair_logits, pair_labels)
        loss = (
            config.mep_loss_weight * (visual_loss + audio_loss + multimodal_loss) + config.pair_loss_weight * pair_loss
        )
        return AVBertForPreTrainingOutput(
            loss=loss,
            visual_mep_loss=visual_loss,
            audio_mep_loss=audio_loss,
            multimodal_mep_loss=multimodal_loss,
            pair_loss=pair_loss,
            pair_logits=pair_logits,
            pair_labels=pair_labels,
            visual_mask=visual_mask.long(),
            audio_mask=audio_mask.long(),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "AVBertClassifierOutput",
    "AVBertForAudioClassification",
    "AVBertForVideoClassification",
    "AVBertModel",
    "AVBertModelOutput",
    "AVBertPreTrainedModel",
]
