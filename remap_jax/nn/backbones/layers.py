"""Building blocks shared by the backbones: torchvision-compatible convolutions and frozen BatchNorm.

Every module here works on NHWC arrays. Parameters are float32; computation runs in `dtype` (float32 or
bfloat16). Module and parameter names are chosen so that a torchvision state-dict key maps onto a Flax path
mechanically (see `remap_jax.nn.backbones.weights`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPS = 1e-5  # torchvision's BatchNorm2d default
# He (fan-out) normal init, torchvision's choice for ResNet convolutions.
_KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class FrozenBatchNorm(nn.Module):
    """BatchNorm that always normalises with its running statistics and never updates them.

    Params: `scale` (C,) and `bias` (C,) in `params` (trainable, as in retrieval fine-tuning);
    `mean` (C,) and `var` (C,) in the `batch_stats` collection (read-only).
    """

    features: int
    dtype: Any = jnp.float32
    eps: float = BN_EPS

    def setup(self):
        self.scale = self.param("scale", nn.initializers.ones, (self.features,), jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        self.mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,), jnp.float32)
        self.var = self.variable("batch_stats", "var", jnp.ones, (self.features,), jnp.float32)

    def affine(self) -> tuple[jax.Array, jax.Array]:
        """Returns (multiplier, offset), both (C,) float32, with y = x * multiplier + offset."""
        mult = self.scale * jax.lax.rsqrt(self.var.value + self.eps)
        return mult, self.bias - self.mean.value * mult

    def __call__(self, x: jax.Array) -> jax.Array:
        mult, offset = self.affine()
        return (x * mult.astype(self.dtype) + offset.astype(self.dtype)).astype(self.dtype)


class ConvBN(nn.Module):
    """Bias-free convolution followed by frozen BatchNorm (torchvision's conv + bn pair), optional activation.

    With `fold_bn=True` the BatchNorm affine transform is folded into the convolution kernel and a bias at
    call time: the variables are identical to the unfolded module, only one pass over the activation is
    saved. Parameter names: `conv/kernel` (kh, kw, in/groups, out) and `bn/{scale,bias}`,
    stats `bn/{mean,var}`. `padding` "torch" pads kernel // 2 on every side (torchvision), "SAME" is
    TensorFlow's (EfficientNet); `eps` is the BatchNorm epsilon; `activation` runs when `relu` is True.
    """

    features: int
    kernel: int
    stride: int = 1
    groups: int = 1
    relu: bool = True
    fold_bn: bool = False
    dtype: Any = jnp.float32
    padding: str = "torch"
    eps: float = BN_EPS
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array, intermediates: bool = False) -> jax.Array | dict[str, jax.Array]:
        """x: (B, H, W, Cin) -> (B, H', W', features).

        With `intermediates=True` returns {"conv": pre-BN, "bn": post-BN, "relu": post-activation}
        (computed unfolded whatever `fold_bn` says, since the pre-BN map does not exist in the folded
        computation).
        """
        pad = self.kernel // 2 if self.padding == "torch" else self.padding
        x = x.astype(self.dtype)
        bn = FrozenBatchNorm(self.features, dtype=self.dtype, eps=self.eps, name="bn")
        shape = (self.kernel, self.kernel, x.shape[-1] // self.groups, self.features)
        kernel = _ConvKernel(shape, name="conv")()
        if self.fold_bn and not intermediates:
            mult, offset = bn.affine()
            y = _conv(x, (kernel * mult).astype(self.dtype), self.stride, pad, self.groups)
            y = y + offset.astype(self.dtype)
            return self.activation(y) if self.relu else y
        c = _conv(x, kernel.astype(self.dtype), self.stride, pad, self.groups)
        b = bn(c)
        y = self.activation(b) if self.relu else b
        return {"conv": c, "bn": b, "relu": y} if intermediates else y


class _ConvKernel(nn.Module):
    """Holds a conv kernel (kh, kw, in/groups, out) under the name `kernel`, like nn.Conv does."""

    shape: tuple[int, ...]

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("kernel", _KERNEL_INIT, self.shape, jnp.float32)


def _padding(size: int, kernel: int, stride: int, pad: int | str) -> tuple[int, int, int]:
    """(low, high, output size) along one spatial axis: `pad` on both sides, or TensorFlow's "SAME"."""
    if isinstance(pad, str):
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2, out
    return pad, pad, (size + 2 * pad - kernel) // stride + 1


@functools.partial(jax.jit, static_argnums=(2, 3))  # a named call in the jaxpr (tests count them); inlined
def _depthwise_by_shifts(x: jax.Array, kernel: jax.Array, stride: int, pad: int | str) -> jax.Array:
    """Depthwise convolution (kernel (kh, kw, 1, C)) as kh * kw strided slices of the padded map, each
    multiplied by its (C,) tap and summed: elementwise loops XLA fuses and vectorises.

    XLA's CPU backend lowers a grouped convolution with one channel per group to slow generic code, many
    times slower than this, forward and backward. Computed in float32 (16-bit float arithmetic is scalar on
    the CPU) and returned in the kernel's dtype; the sum order differs from the convolution's (float rounding
    only).
    """
    kh, kw, _, c = kernel.shape
    b, h, w, _ = x.shape
    top, bottom, oh = _padding(h, kh, stride, pad)
    left, right, ow = _padding(w, kw, stride, pad)
    xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (top, bottom), (left, right), (0, 0)))
    taps = kernel.astype(jnp.float32)
    out = None
    for i in range(kh):
        for j in range(kw):
            end = (b, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c)
            window = jax.lax.slice(xp, (0, i, j, 0), end, (1, stride, stride, 1))
            term = window * taps[i, j, 0]
            out = term if out is None else out + term
    return out.astype(kernel.dtype)


def _conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int | str, groups: int) -> jax.Array:
    """NHWC x HWIO convolution; `pad` pixels on every side, or "SAME" (TensorFlow's: low = total // 2).

    Depthwise convolutions (one channel per group) are chosen per lowering platform
    (`jax.lax.platform_dependent`): `_depthwise_by_shifts` on CPU, a grouped `lax.conv_general_dilated`
    on GPU/TPU. The choice is made when the program is lowered, not traced, so one traced program lowers
    to the right kernels for any platform (an export for several platforms carries both). Everything else
    is `lax.conv_general_dilated`."""
    depthwise = groups > 1 and kernel.shape[2] == 1 and groups == x.shape[-1] == kernel.shape[-1]
    if depthwise:
        return jax.lax.platform_dependent(
            x, kernel,
            cpu=functools.partial(_depthwise_by_shifts, stride=stride, pad=pad),
            default=functools.partial(_lax_conv, stride=stride, pad=pad, groups=groups),
        )
    return _lax_conv(x, kernel, stride, pad, groups)


def _lax_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int | str, groups: int) -> jax.Array:
    """`lax.conv_general_dilated` on NHWC x HWIO in the kernel's dtype."""
    return jax.lax.conv_general_dilated(
        x.astype(kernel.dtype),
        kernel,
        window_strides=(stride, stride),
        padding=pad if isinstance(pad, str) else ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def max_pool_torch(x: jax.Array, window: int, stride: int, pad: int) -> jax.Array:
    """`torch.nn.MaxPool2d(window, stride, pad)` on NHWC: padding counts as -inf, floor output size.

    float32 maps are padded with -inf explicitly, then pooled without padding: XLA folds that pad into the
    reduce-window (the same optimised CPU program), and jax2onnx, whose MaxPool drops a pooling's own
    padding, converts it correctly (ONNX export, `remap_jax.describe.export`). Other dtypes keep the pooling's
    padding: on XLA:CPU a 16-bit pad is not folded and would copy the map."""
    # window_shape by keyword: jax2onnx replaces nn.max_pool while converting, with keyword-only arguments
    if x.dtype == jnp.float32 and pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
        return nn.max_pool(x, window_shape=(window, window), strides=(stride, stride))
    return nn.max_pool(x, window_shape=(window, window), strides=(stride, stride),
                       padding=((pad, pad), (pad, pad)))


def check_taps(images: jax.Array, taps: Sequence[str], order: dict[str, int]) -> set[str]:
    """Validates images (B, H, W, 3) and tap names against `order` (name -> position); returns the tap set."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected shape (B, H, W, 3), got {tuple(images.shape)}")
    if isinstance(taps, str):
        taps = (taps,)
    if not taps:
        raise ValueError("taps: expected at least one tap name, got none")
    unknown = [t for t in taps if t not in order]
    if unknown:
        raise ValueError(f"taps: unknown tap name(s) {unknown}; valid names are: {', '.join(order)}")
    return set(taps)


class TapRecorder:
    """Collects a backbone's requested tap outputs as it runs, and says when the deepest one is reached.

        taps = TapRecorder(images, requested, self.tap_names())
        x = block(x)
        if taps.record("layer1.0", x):   # True once nothing deeper was asked for: stop computing
            return taps.out
    """

    def __init__(self, images: jax.Array, taps: Sequence[str], names: Sequence[str]):
        self.order = {name: i for i, name in enumerate(names)}
        self.wanted = check_taps(images, taps, self.order)
        self.last = max(self.order[t] for t in self.wanted)
        self.out: dict[str, jax.Array] = {}

    def record(self, name: str, value: jax.Array) -> bool:
        """Keeps `value` if `name` was asked for; True when `name` is (past) the deepest tap asked for."""
        if name in self.wanted:
            self.out[name] = value
        return self.order[name] >= self.last
