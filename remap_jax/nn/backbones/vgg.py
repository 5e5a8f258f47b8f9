"""VGG16 (torchvision `vgg16`, no BatchNorm) with named taps.

Tap names: `conv{b}_{i}` is the output of that convolution after its ReLU (the feature map retrieval methods
pool, e.g. `conv5_3`), `pool{b}` the max-pool output. torchvision's indices are accepted as well:
`features.N` is the output of `model.features[N]` (a conv index gives the pre-ReLU map).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from remap_jax.nn.backbones.layers import TapRecorder, max_pool_torch

# Conv channels per block; each block ends in a 2x2 max-pool. torchvision's `features` Sequential
# interleaves a ReLU after every conv.
VGG16_CFG = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg_layout(cfg=VGG16_CFG) -> list[tuple[str, int, str | None, int]]:
    """[(kind, features_index, friendly_name, channels)] for every op of torchvision's `features`."""
    ops = []
    idx = 0
    for b, block in enumerate(cfg, start=1):
        for i, ch in enumerate(block, start=1):
            ops.append(("conv", idx, None, ch))
            ops.append(("relu", idx + 1, f"conv{b}_{i}", ch))
            idx += 2
        ops.append(("pool", idx, f"pool{b}", block[-1]))
        idx += 1
    return ops


def vgg_tap_names(cfg=VGG16_CFG) -> tuple[str, ...]:
    names = []
    for _, idx, friendly, _ in vgg_layout(cfg):
        if friendly:
            names.append(friendly)
        names.append(f"features.{idx}")
    return tuple(names)


class VGG(nn.Module):
    """VGG feature extractor. images: (B, H, W, 3) ImageNet-normalised -> {tap: (B, h, w, C)} in `dtype`.

    Flax module names: `features_N` (nn.Conv with bias), matching torchvision's `features.N`.
    `fold_bn` is accepted for a uniform interface and has no effect (VGG16 has no BatchNorm).
    """

    cfg: tuple[tuple[int, ...], ...] = VGG16_CFG
    fold_bn: bool = False
    dtype: Any = jnp.float32

    def tap_names(self) -> tuple[str, ...]:
        return vgg_tap_names(self.cfg)

    @nn.compact
    def __call__(self, images: jax.Array, taps: Sequence[str] = ("conv5_3",)) -> dict[str, jax.Array]:
        recorder = TapRecorder(images, taps, self.tap_names())
        x = images.astype(self.dtype)
        for kind, idx, friendly, ch in vgg_layout(self.cfg):
            if kind == "conv":
                x = nn.Conv(
                    ch, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                    name=f"features_{idx}",
                )(x)
            elif kind == "relu":
                x = nn.relu(x)
            else:
                x = max_pool_torch(x, 2, 2, 0)
            done = [recorder.record(name, x) for name in (friendly, f"features.{idx}") if name is not None]
            if any(done):
                return recorder.out
        return recorder.out
