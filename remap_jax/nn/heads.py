"""Pooling heads: the REMAP head (ROI streams + whitening) and baseline heads, as Flax linen modules.

Every head takes a mapping `layer name -> (B, H, W, C)` feature maps (what a backbone returns for its taps)
and returns (B, D) float32 unit vectors:

- `REMAPHead`: per tapped layer an ROI stream (R-MAC regions -> spatial max -> L2 per region -> weighted sum
  with non-negative weights alpha), concatenation over layers, a whitening dense layer with bias, final L2.
  With alpha = 1 and identity whitening it is multi-layer R-MAC.
- Baselines with the same fields and call: `MAC` (global max), `SPoC` (global average), `GeM` (generalised
  mean with learnable p) and `RMAC` (regions with fixed unit weights). Each pooled layer vector is L2
  normalised before concatenation and whitening, as cnnimageretrieval-pytorch does.

Whitening convention: `whitening_init = (W, b)` with W of shape (out, in) and b of shape (out,) means
y = x @ W.T + b; the Dense kernel stores W.T.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from remap_jax.nn.regions import rmac_regions
from remap_jax.nn.roi_pool import roi_max_pool
from remap_jax.runtime.extras import require

if TYPE_CHECKING:
    import optax

__all__ = [
    "GeM",
    "MAC",
    "RMAC",
    "REMAPHead",
    "RegionWeighting",
    "SPoC",
    "Whitening",
    "l2_normalize",
    "nonnegative_alpha",
    "region_descriptors",
    "stream_name",
]


def l2_normalize(x: jnp.ndarray, axis: int = -1, eps: float = 1e-6) -> jnp.ndarray:
    """x / ||x|| along `axis`, computed as x * rsqrt(sum(x^2) + eps^2).

    A zero vector maps to zero, and its gradient is finite (x / (||x|| + eps) has a NaN gradient at 0).
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + eps * eps)


def stream_name(layer: str) -> str:
    """Name of the ROI stream submodule of `layer` inside `REMAPHead` (dots are not allowed in names)."""
    return "stream_" + layer.replace(".", "_")


def _check_features(features: Mapping[str, jnp.ndarray], layers: Sequence[str]) -> None:
    if not layers:
        raise ValueError("layers: expected at least one layer name, got an empty sequence")
    missing = [name for name in layers if name not in features]
    if missing:
        raise KeyError(f"features: missing layer(s) {missing}; got layers {sorted(features)}")
    for name in layers:
        shape = tuple(features[name].shape)
        if len(shape) != 4:
            raise ValueError(f"features[{name!r}]: expected rank 4 (B, H, W, C), got shape {shape}")


def region_descriptors(
    features: Mapping[str, jnp.ndarray],
    layers: Sequence[str],
    levels: int = 4,
    overlap: float = 0.4,
    include_global: bool = False,
) -> dict[str, jnp.ndarray]:
    """L2-normalised R-MAC region vectors of every layer.

    Args:
      features: layer name -> (B, H, W, C) map.
      layers: which layers to pool.
    Returns:
      layer name -> (B, R, C) float32 unit vectors, R = number of R-MAC regions of that layer's map.
      Layers with the same spatial size (and dtype) are pooled in a single kernel call.
    """
    _check_features(features, layers)
    groups: dict[tuple, list[str]] = {}
    for name in layers:
        fmap = features[name]
        groups.setdefault((fmap.shape[0], fmap.shape[1], fmap.shape[2], jnp.dtype(fmap.dtype)), []).append(
            name
        )
    out: dict[str, jnp.ndarray] = {}
    for (_, height, width, _), names in groups.items():
        regions = rmac_regions(height, width, levels, overlap, include_global)
        maps = [features[name] for name in names]
        stacked = maps[0] if len(maps) == 1 else jnp.concatenate(maps, axis=-1)
        pooled = roi_max_pool(stacked, regions)
        offset = 0
        for name, fmap in zip(names, maps, strict=True):
            channels = fmap.shape[-1]
            out[name] = l2_normalize(pooled[..., offset : offset + channels])
            offset += channels
    return out


class RegionWeighting(nn.Module):
    """Non-negative weighted sum over regions: (B, R, C) -> (B, C).

    The weights `alpha` (shape (R,)) start from `alpha_init` (default ones: R-MAC). They are used as
    max(alpha, 0), so the output never sees a negative weight, and `nonnegative_alpha()` projects the stored
    parameter back to >= 0 after each optimiser update.
    """

    alpha_init: Any = None

    @nn.compact
    def __call__(self, region_vectors: jnp.ndarray) -> jnp.ndarray:
        if region_vectors.ndim != 3:
            raise ValueError(
                f"region_vectors: expected rank 3 (B, R, C), got shape {tuple(region_vectors.shape)}"
            )
        num_regions = region_vectors.shape[1]
        if self.alpha_init is None:
            init = np.ones((num_regions,), np.float32)
        else:
            init = np.asarray(self.alpha_init, np.float32).reshape(-1)
            if init.shape != (num_regions,):
                raise ValueError(
                    f"alpha_init: expected {num_regions} region weights for this feature map, got shape "
                    f"{np.asarray(self.alpha_init).shape}"
                )
            if (init < 0).any() or not np.isfinite(init).all():
                raise ValueError("alpha_init: expected finite non-negative weights")
        alpha = self.param("alpha", lambda _key: jnp.asarray(init))
        return jnp.einsum("brc,r->bc", region_vectors.astype(jnp.float32), jnp.maximum(alpha, 0.0))


class Whitening(nn.Module):
    """Dense layer with bias, y = x @ W.T + b, initialised from `init = (W, b)` or an identity.

    With no init and `out_dim` < input dim the identity is truncated (keeps the first `out_dim` dims).
    """

    out_dim: int | None = None
    init: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        in_dim = x.shape[-1]
        if self.init is not None:
            w, b = (np.asarray(a, np.float32) for a in self.init)
            out_dim = w.shape[0]
            if w.ndim != 2 or w.shape[1] != in_dim or b.shape != (out_dim,):
                raise ValueError(
                    f"whitening_init: expected W of shape (out, {in_dim}) and b of shape (out,), got W "
                    f"{w.shape} and b {b.shape}"
                )
            if self.out_dim is not None and self.out_dim != out_dim:
                raise ValueError(f"whitening_init: W has {out_dim} outputs but out_dim={self.out_dim}")
            kernel_init, bias_init = w.T, b
        else:
            out_dim = in_dim if self.out_dim is None else self.out_dim
            if not 1 <= out_dim <= in_dim:
                raise ValueError(f"out_dim: expected 1..{in_dim} without whitening_init, got {out_dim}")
            kernel_init, bias_init = np.eye(in_dim, out_dim, dtype=np.float32), np.zeros(out_dim, np.float32)
        kernel = self.param("kernel", lambda _key: jnp.asarray(kernel_init))
        bias = self.param("bias", lambda _key: jnp.asarray(bias_init))
        return x.astype(jnp.float32) @ kernel + bias


def _finish(vectors: jnp.ndarray, whiten: bool, out_dim, whitening_init) -> jnp.ndarray:
    """(B, D_in) pooled vectors -> optional whitening -> L2."""
    if whiten:
        vectors = Whitening(out_dim, whitening_init, name="whiten")(vectors)
    elif out_dim is not None or whitening_init is not None:
        raise ValueError("out_dim/whitening_init: given but whiten=False")
    return l2_normalize(vectors)


class REMAPHead(nn.Module):
    """REMAP: ROI streams on several layers, concatenation, whitening, L2.

    Attributes:
      layers: tapped layer names, in concatenation order.
      levels, overlap, include_global: the R-MAC grid (L=4 on a 24x32 map gives 40 regions).
      out_dim: descriptor size D (default: the concatenated size, or W's rows when whitening_init is given).
      alpha_init: optional mapping layer -> (R,) initial region weights (e.g. KL weights); default ones.
      whitening_init: optional (W, b) with W (D, sum C), b (D,); default identity.
      whiten: whether to have the whitening layer at all.
    Call: mapping layer -> (B, H, W, C) -> (B, D) float32 unit vectors.
    Params: {stream_name(layer): {"alpha": (R,)}, "whiten": {"kernel": (sum C, D), "bias": (D,)}}.
    """

    layers: Sequence[str]
    levels: int = 4
    overlap: float = 0.4
    include_global: bool = False
    out_dim: int | None = None
    alpha_init: Mapping[str, Any] | None = None
    whitening_init: Any = None
    whiten: bool = True

    @nn.compact
    def __call__(self, features: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
        layers = tuple(self.layers)
        alpha_init = dict(self.alpha_init or {})
        unknown = sorted(set(alpha_init) - set(layers))
        if unknown:
            raise KeyError(f"alpha_init: layers {unknown} are not among the head's layers {list(layers)}")
        regions = region_descriptors(features, layers, self.levels, self.overlap, self.include_global)
        streams = [
            RegionWeighting(alpha_init.get(layer), name=stream_name(layer))(regions[layer])
            for layer in layers
        ]
        return _finish(jnp.concatenate(streams, axis=-1), self.whiten, self.out_dim, self.whitening_init)


def _global_pool_head(pool):
    """Builds a baseline head class from a (B, H, W, C) -> (B, C) pooling function."""

    class _Head(nn.Module):
        layers: Sequence[str]
        out_dim: int | None = None
        whitening_init: Any = None
        whiten: bool = True

        @nn.compact
        def __call__(self, features: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
            _check_features(features, tuple(self.layers))
            pooled = [l2_normalize(pool(self, features[layer])) for layer in self.layers]
            return _finish(jnp.concatenate(pooled, axis=-1), self.whiten, self.out_dim, self.whitening_init)

    return _Head


def _mac(_module, fmap):
    return fmap.astype(jnp.float32).max(axis=(1, 2))


def _spoc(_module, fmap):
    return fmap.astype(jnp.float32).mean(axis=(1, 2))


class MAC(_global_pool_head(_mac)):
    """Global max pooling per layer (Tolias et al. 2016) -> L2 -> concat -> whitening -> L2."""


class SPoC(_global_pool_head(_spoc)):
    """Global average pooling per layer (Babenko & Lempitsky 2015) -> L2 -> concat -> whitening -> L2."""


class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al. 2018) with one learnable exponent p per head.

    gem(x) = mean(max(x, eps)^p)^(1/p) over H, W; p = 1 is SPoC, p -> inf is MAC.
    """

    layers: Sequence[str]
    out_dim: int | None = None
    whitening_init: Any = None
    whiten: bool = True
    p_init: float = 3.0
    eps: float = 1e-6

    @nn.compact
    def __call__(self, features: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
        _check_features(features, tuple(self.layers))
        p = self.param("p", lambda _key: jnp.asarray(self.p_init, jnp.float32))
        pooled = []
        for layer in self.layers:
            x = jnp.maximum(features[layer].astype(jnp.float32), self.eps)
            pooled.append(l2_normalize(jnp.mean(x**p, axis=(1, 2)) ** (1.0 / p)))
        return _finish(jnp.concatenate(pooled, axis=-1), self.whiten, self.out_dim, self.whitening_init)


class RMAC(nn.Module):
    """R-MAC (Tolias et al. 2016) per layer: sum of L2-normalised region maxima with fixed unit weights."""

    layers: Sequence[str]
    out_dim: int | None = None
    whitening_init: Any = None
    whiten: bool = True
    levels: int = 4
    overlap: float = 0.4
    include_global: bool = False

    @nn.compact
    def __call__(self, features: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
        regions = region_descriptors(
            features, tuple(self.layers), self.levels, self.overlap, self.include_global
        )
        pooled = [l2_normalize(regions[layer].sum(axis=1)) for layer in self.layers]
        return _finish(jnp.concatenate(pooled, axis=-1), self.whiten, self.out_dim, self.whitening_init)


def _alpha_mask(params):
    """Pytree of booleans, True at every leaf named `alpha`."""

    def is_alpha(path, _leaf):
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) == "alpha"

    return jax.tree_util.tree_map_with_path(is_alpha, params)


def nonnegative_alpha() -> optax.GradientTransformation:
    """Optax transformation that keeps every `alpha` parameter >= 0 after the update (projection).

    Chain it last: `optax.chain(optimizer, nonnegative_alpha())`; `update` must be given `params`.
    """
    optax = require("optax", "train", "training (remap_jax.nn.heads.nonnegative_alpha)")
    return optax.masked(optax.keep_params_nonnegative(), _alpha_mask)
