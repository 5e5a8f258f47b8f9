"""ResNet and ResNeXt (torchvision v1.5 layout: stride on the 3x3 conv) with named taps.

Tap names follow torchvision's module names: `conv1` (pre-BN), `bn1`, `relu`, `maxpool`, then every block
`layer{s}.{i}` and every stage `layer{s}` (= its last block). Calling the module with
`taps=("layer4.1", "layer4.2")` returns {name: (B, h, w, C)} and stops after the deepest tap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from remap_jax.nn.backbones.layers import ConvBN, TapRecorder, max_pool_torch

STEM_TAPS = ("conv1", "bn1", "relu", "maxpool")


class _ResidualBlock(nn.Module):
    """What the two residual blocks share: their fields and the shortcut."""

    planes: int
    stride: int = 1
    groups: int = 1
    width_per_group: int = 64
    fold_bn: bool = False
    dtype: Any = jnp.float32

    def _add_shortcut(self, x: jax.Array, y: jax.Array, out: int, kw: dict) -> jax.Array:
        """relu(y + shortcut): x itself, or a strided 1x1 ConvBN ("downsample") where the shape changes."""
        shortcut = x.astype(self.dtype)
        if self.stride != 1 or x.shape[-1] != out:
            shortcut = ConvBN(out, 1, self.stride, relu=False, name="downsample", **kw)(x)
        return nn.relu(y + shortcut)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs (ResNet-18/34). Submodules conv1, conv2, downsample mirror torchvision's names."""

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(fold_bn=self.fold_bn, dtype=self.dtype)
        y = ConvBN(self.planes, 3, self.stride, name="conv1", **kw)(x)
        y = ConvBN(self.planes, 3, relu=False, name="conv2", **kw)(y)
        return self._add_shortcut(x, y, self.planes, kw)


class Bottleneck(_ResidualBlock):
    """1x1 -> 3x3 (grouped for ResNeXt, carries the stride) -> 1x1 with 4x expansion."""

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(fold_bn=self.fold_bn, dtype=self.dtype)
        width = int(self.planes * (self.width_per_group / 64.0)) * self.groups
        out = self.planes * self.expansion
        y = ConvBN(width, 1, name="conv1", **kw)(x)
        y = ConvBN(width, 3, self.stride, groups=self.groups, name="conv2", **kw)(y)
        y = ConvBN(out, 1, relu=False, name="conv3", **kw)(y)
        return self._add_shortcut(x, y, out, kw)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def resnet_tap_names(stage_sizes: Sequence[int]) -> tuple[str, ...]:
    """All tap names of a ResNet with the given blocks per stage, in computation order."""
    names = list(STEM_TAPS)
    for s, n in enumerate(stage_sizes, start=1):
        names += [f"layer{s}.{i}" for i in range(n)]
        names.append(f"layer{s}")
    return tuple(names)


class ResNet(nn.Module):
    """ResNet / ResNeXt feature extractor (no classifier).

    images: (B, H, W, 3) float, ImageNet-normalised RGB. Returns {tap: (B, h, w, C)} in `dtype`.
    Flax module names: stem `conv1` (a ConvBN holding torchvision's conv1 + bn1), blocks `layer{s}_{i}`.
    """

    block: str
    stage_sizes: tuple[int, ...]
    groups: int = 1
    width_per_group: int = 64
    fold_bn: bool = False
    dtype: Any = jnp.float32

    def tap_names(self) -> tuple[str, ...]:
        return resnet_tap_names(self.stage_sizes)

    @nn.compact
    def __call__(self, images: jax.Array, taps: Sequence[str] = ("layer4",)) -> dict[str, jax.Array]:
        recorder = TapRecorder(images, taps, self.tap_names())
        emit, out = recorder.record, recorder.out
        kw = dict(fold_bn=self.fold_bn, dtype=self.dtype)
        stem = ConvBN(64, 7, 2, name="conv1", **kw)
        if recorder.wanted & {"conv1", "bn1"}:
            parts = stem(images, intermediates=True)
            if emit("conv1", parts["conv"]) or emit("bn1", parts["bn"]):
                return out
            x = parts["relu"]
        else:
            x = stem(images)
        if emit("relu", x):
            return out
        x = max_pool_torch(x, 3, 2, 1)
        if emit("maxpool", x):
            return out
        block_cls = BLOCKS[self.block]
        for s, n_blocks in enumerate(self.stage_sizes, start=1):
            planes = 64 * 2 ** (s - 1)
            for i in range(n_blocks):
                stride = 2 if (s > 1 and i == 0) else 1
                x = block_cls(
                    planes, stride, self.groups, self.width_per_group, name=f"layer{s}_{i}", **kw
                )(x)
                if emit(f"layer{s}.{i}", x):
                    return out
            if emit(f"layer{s}", x):
                return out
        return out

