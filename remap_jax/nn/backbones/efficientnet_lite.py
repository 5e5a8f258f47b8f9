"""EfficientNet-Lite0..4 (Tan & Le 2019; the "Lite" variants of TensorFlow's TPU repository) with named taps.

The network is the one of the `efficientnet-lite-pytorch` package (whose weights are importable):
a 3x3 stride-2 stem conv with 32 channels, MBConv blocks (1x1 expand, depthwise kxk, 1x1 linear project,
identity skip when the shape is kept; no squeeze-excitation), a 1x1 head conv with 1280 channels. Every
conv is followed by frozen BatchNorm (eps 1e-3, TensorFlow's) and, except the projection, ReLU6. Stem and
head widths are fixed for all variants; the first and last block groups are not repeated more for depth.
Convolutions pad like TensorFlow's "SAME" for the actual input size (total padding
max((ceil(n/s) - 1) * s + k - n, 0), the extra pixel at the bottom/right), which is also what the reference
computes when built without a fixed image size.

Tap names: `stem` (after stem BN + ReLU6), `blocks.0` ... `blocks.{N-1}` (every MBConv block output, in
the reference's order; Lite0 has N = 16), `head` (after head conv + BN + ReLU6, 1280 channels, stride 32).
Calling the module with `taps=("blocks.15", "head")` returns {name: (B, h, w, C)} and computes nothing past
the deepest tap.

Flax module names: `stem` and `head` (ConvBN-style `conv`/`bn` pairs), `blocks_{i}` with `expand` (absent
when the expansion ratio is 1), `depthwise`, `project`; `remap_jax.nn.backbones.weights` maps them onto the
EfficientNet-PyTorch state-dict names (`_conv_stem`, `_bn0`, `_blocks.{i}._expand_conv`, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from remap_jax.nn.backbones.layers import ConvBN, TapRecorder

BN_EPS = 1e-3  # TensorFlow's BatchNorm epsilon, kept by the reference (torchvision's is 1e-5)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# EfficientNet-B0's block groups: (repeats, kernel, stride, expand ratio, in channels, out channels).
BASE_GROUPS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# (width, depth) coefficients of the reference (its `efficientnet_params`, from TF's lite builder).
LITE_COEFFICIENTS = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
    "efficientnet_lite3": (1.2, 1.4),
    "efficientnet_lite4": (1.4, 1.8),
}

# Input normalisation, RGB for pixels in [0, 1]: (x - 127/255) / (128/255), i.e. (pixel - 127) / 128 on
# 0..255 as TensorFlow trained EfficientNet-Lite, rather than ImageNet mean/std: with the real weights and
# the reference implementation (tools/make_efficientnet_parity_fixture.py --measure-normalization), the
# stem BatchNorm's stored running statistics match the statistics of the stem conv outputs far better under
# this normalisation; class confidence on a few labelled photos is mixed, too few photos to overrule it.
LITE_INPUT_MEAN = (127 / 255,) * 3
LITE_INPUT_STD = (128 / 255,) * 3


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: channels in/out, expansion ratio, depthwise kernel size and stride."""

    in_channels: int
    out_channels: int
    expand_ratio: int
    kernel: int
    stride: int


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by `width`, rounded to a multiple of `divisor` but never down by more than 10%."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


@functools.cache
def block_specs(width: float, depth: float) -> tuple[BlockSpec, ...]:
    """Every MBConv block of EfficientNet-Lite with these coefficients, in computation order."""
    blocks = []
    last = len(BASE_GROUPS) - 1
    for g, (repeats, kernel, stride, expand, cin, cout) in enumerate(BASE_GROUPS):
        cin, cout = round_filters(cin, width), round_filters(cout, width)
        if g == 0:
            cin = STEM_CHANNELS  # the stem is not widened
        if g not in (0, last):  # Lite keeps one block in the first and last group
            repeats = int(math.ceil(depth * repeats))
        blocks.append(BlockSpec(cin, cout, expand, kernel, stride))
        blocks += [BlockSpec(cout, cout, expand, kernel, 1) for _ in range(repeats - 1)]
    return tuple(blocks)


def efficientnet_lite_tap_names(width: float, depth: float) -> tuple[str, ...]:
    """All tap names, in computation order: stem, blocks.0 ... blocks.{N-1}, head."""
    n = len(block_specs(width, depth))
    return ("stem", *(f"blocks.{i}" for i in range(n)), "head")


def efficientnet_lite_default_taps(width: float, depth: float) -> tuple[str, str]:
    """REMAP's multi-layer taps for EfficientNet-Lite: the last MBConv block and the head.

    REMAP taps the two deepest blocks of a ResNet's last stage ("layer 1+2"): the deepest, most semantic
    maps, at the same stride so that one region grid serves both. The stride-32 part of EfficientNet-Lite
    is the last two block groups (Lite0: blocks 11-14 with 192 channels, block 15 with 320) and the head;
    its two deepest taps are `blocks.{N-1}` (the last block: 320 channels for Lite0/1, a linear
    bottleneck) and `head` (1280 channels after ReLU6, the map the classifier pools). Both stride 32, like
    layer4.1/layer4.2. Not tuned on a retrieval benchmark: `valid_taps` lists the alternatives.
    """
    return (f"blocks.{len(block_specs(width, depth)) - 1}", "head")


def same_conv_bn(features: int, kernel: int, stride: int = 1, groups: int = 1, relu6: bool = True, *,
                 fold_bn: bool = False, dtype: Any = jnp.float32, name: str) -> ConvBN:
    """EfficientNet's conv: bias-free, TensorFlow "SAME" padding, frozen BatchNorm (eps 1e-3), ReLU6.

    (B, H, W, Cin) -> (B, ceil(H / stride), ceil(W / stride), features); variables as in `layers.ConvBN`.
    """
    return ConvBN(features, kernel, stride, groups, relu=relu6, fold_bn=fold_bn, dtype=dtype, padding="SAME",
                  eps=BN_EPS, activation=jax.nn.relu6, name=name)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand + ReLU6, depthwise + ReLU6, 1x1 linear projection, skip."""

    spec: BlockSpec
    fold_bn: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.spec
        kw = dict(fold_bn=self.fold_bn, dtype=self.dtype)
        mid = s.in_channels * s.expand_ratio
        y = x
        if s.expand_ratio != 1:
            y = same_conv_bn(mid, 1, name="expand", **kw)(y)
        y = same_conv_bn(mid, s.kernel, s.stride, groups=mid, name="depthwise", **kw)(y)
        y = same_conv_bn(s.out_channels, 1, relu6=False, name="project", **kw)(y)
        if s.stride == 1 and s.in_channels == s.out_channels:
            y = y + x.astype(self.dtype)
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature extractor (no classifier).

    images: (B, H, W, 3) float RGB, normalised with `remap_jax.nn.backbones.input_normalization(arch)`.
    Returns {tap: (B, h, w, C)} in `dtype`; the stem has stride 2, `head` stride 32.
    """

    width: float = 1.0
    depth: float = 1.0
    fold_bn: bool = False
    dtype: Any = jnp.float32

    def tap_names(self) -> tuple[str, ...]:
        return efficientnet_lite_tap_names(self.width, self.depth)

    @nn.compact
    def __call__(self, images: jax.Array, taps: Sequence[str] = ("head",)) -> dict[str, jax.Array]:
        recorder = TapRecorder(images, taps, self.tap_names())
        emit, out = recorder.record, recorder.out
        kw = dict(fold_bn=self.fold_bn, dtype=self.dtype)
        x = same_conv_bn(STEM_CHANNELS, 3, 2, name="stem", **kw)(images)
        if emit("stem", x):
            return out
        for i, spec in enumerate(block_specs(self.width, self.depth)):
            x = MBConv(spec, name=f"blocks_{i}", **kw)(x)
            if emit(f"blocks.{i}", x):
                return out
        x = same_conv_bn(HEAD_CHANNELS, 1, name="head", **kw)(x)
        emit("head", x)
        return out
