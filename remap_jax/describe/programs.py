"""The Extractor's device programs: the jitted describe and regions functions, the local device mesh, and
REMAP region weights refitted to another input shape.

Programs are cached per (model, scale weights, platform), so extractors of equal models (a trainer
rebuilding its describers, several extractors in one process) share the compiled programs. Inputs are
per-scale tuples: variables (one per scale, see `fit_alpha`) and uint8 (B, H, W, 3) pixel batches.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from remap_jax.model import RetrievalModel, combine_scales
from remap_jax.runtime import xla

__all__ = ["describe_fn", "fit_alpha", "local_mesh", "regions_fn"]


def local_mesh() -> jax.sharding.Mesh:
    """A 1-D `data` mesh over this process's devices."""
    return jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))


def describe_fn(model: RetrievalModel, weights: tuple[float, ...] | None, platform: str):
    """jit(per-scale variables, per-scale uint8 batches -> (B, D)) with `remap_jax.runtime.xla`'s options for
    `platform`, shared by extractors of equal models so that rebuilding an Extractor reuses the compiled
    programs."""
    try:
        return _describe_fn_cached(model, weights, platform)
    except TypeError:  # an unhashable field (e.g. a custom module holding an array): no sharing
        return _make_describe_fn(model, weights, platform)


def _make_describe_fn(model, weights, platform):
    def describe(variables_per_scale, batches):
        descs = [model.apply(v, b) for v, b in zip(variables_per_scale, batches, strict=True)]
        return combine_scales(descs, weights)

    return xla.jit(describe, platform=platform)


_describe_fn_cached = functools.lru_cache(maxsize=16)(_make_describe_fn)


@functools.lru_cache(maxsize=16)
def regions_fn(model: RetrievalModel, platform: str):
    """jit(variables, uint8 batch -> layer -> (B, R, C)): the head's R-MAC grid on every tapped layer."""
    from remap_jax.nn import heads

    head = getattr(model, "head", None)
    if not hasattr(head, "levels"):
        raise ValueError(f"output='regions': the model's head {type(head).__name__} has no R-MAC region "
                         "grid; use a remap or rmac head")

    def regions(variables_per_scale, batches):
        (variables,), (batch,) = variables_per_scale, batches
        features = model.apply(variables, batch, method=RetrievalModel.features)
        return heads.region_descriptors(features, tuple(model.taps), head.levels, head.overlap,
                                        head.include_global)

    return xla.jit(regions, platform=platform)


def fit_alpha(model: RetrievalModel, variables: Mapping, size: tuple[int, int], image_size: Sequence[int],
              replicated: jax.sharding.Sharding) -> Mapping:
    """`variables` with REMAP region weights alpha (R,) fitted to the regions of inputs of `size` pixels.

    Region weights belong to one map shape. Same-aspect sizes (landscape/portrait, the scales of MS-REMAP)
    keep R. For another R (aspect-preserving buckets) a constant alpha (off-the-shelf REMAP = R-MAC) is
    re-broadcast (placed on `replicated`); learned weights cannot be transferred and raise an error naming
    the training `image_size`. Other heads: `variables` unchanged.
    """
    from remap_jax.nn import heads
    from remap_jax.nn.regions import num_regions

    head = getattr(model, "head", None)
    if not isinstance(head, heads.REMAPHead):
        return variables
    head_params = variables["params"].get("head", {})
    apply = lambda v, x: model.backbone.apply(v, x, taps=tuple(model.taps))  # noqa: E731
    backbone_vars = {
        "params": variables["params"]["backbone"],
        "batch_stats": variables.get("batch_stats", {}).get("backbone", {}),
    }
    maps = jax.eval_shape(apply, backbone_vars, jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))
    new_head = dict(head_params)
    changed = False
    for layer in head.layers:
        name = heads.stream_name(layer)
        alpha = np.asarray(head_params[name]["alpha"])
        _, h, w, _ = maps[layer].shape
        r = num_regions(h, w, head.levels, head.overlap, head.include_global)
        if alpha.shape == (r,):
            continue
        if not np.all(alpha == alpha.reshape(-1)[0]):
            raise ValueError(
                f"image size {size}: layer {layer!r} has a {h}x{w} map with {r} regions but the model's "
                f"learned region weights have {alpha.shape[0]}; use resize='fixed' with the training "
                f"image size (aspect ratio {image_size[1]}:{image_size[0]})"
            )
        new_head[name] = {**head_params[name], "alpha": jnp.full((r,), alpha.reshape(-1)[0], jnp.float32)}
        changed = True
    if not changed:
        return variables
    params = {**variables["params"], "head": jax.device_put(new_head, replicated)}
    return {**variables, "params": params}
