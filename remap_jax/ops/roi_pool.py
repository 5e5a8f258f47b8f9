"""Vectorised ROI max-pooling over a static set of rectangular regions.

The classic formulation slices every region and takes its max: R reductions that together read the map
about five times over (R-MAC at L=4 covers each cell ~5x) and compile into one op per region. Here:

1. **Cells.** The region borders cut the rows and the columns into atomic intervals; no region border falls
   inside an atomic *cell* (row interval x column interval), so every region is a rectangle of whole cells.
   One pass over the map computes the max of every cell: (B, H, W, C) -> (B, n_row_cells, n_col_cells, C),
   for the 40-region grid on a 24x32 map a 12x17 grid. This is the only step that touches the map.
2. **Regions.** Regions are grouped by size (each R-MAC scale is one group: a full grid of row intervals x
   column intervals). Per group, one masked max-reduction over the cell rows gives its row bands
   (B, n_i, n_col_cells, C), and one over the cell columns of those bands gives the whole group
   (B, n_i, n_j, C) at once. Groups are concatenated and put in the caller's region order.

The number of compiled ops depends on the number of region sizes (L for R-MAC), not on R. Step 1 has two
lowerings: on CPU, elementwise maxima of the (B, C) pixel slices of each cell, which XLA emits as small
loop fusions that read the map exactly once and write only the cell grid (a gather-based version
materialises a padded copy of the map, and large intermediate writes dominate on CPU); on GPU/TPU, an
idempotently padded gather (a cell's pixel list is padded by repeating its last pixel, harmless for max)
reduced in one fused reduction.

Half-precision inputs are reduced in float32 (exact: a max of bf16 values is a bf16 value; CPUs have no
native bf16 max) and returned in the input dtype. Everything about the regions is static numpy computed at
trace time, so the compiled program depends only on the shapes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["roi_max_pool", "validate_regions"]

_METHODS = ("auto", "slices", "gather")


def validate_regions(regions, height: int, width: int) -> np.ndarray:
    """Checks a region array against a map of `height` x `width` cells and returns it as int64 (R, 4).

    Raises ValueError naming the first bad region.
    """
    regions = np.asarray(regions)
    if regions.ndim != 2 or regions.shape[1] != 4 or regions.shape[0] == 0:
        raise ValueError(
            f"regions: expected a non-empty (R, 4) array of [y0, x0, h, w], got shape {regions.shape}"
        )
    if not np.issubdtype(regions.dtype, np.integer):
        raise ValueError(f"regions: expected integer cell coordinates, got dtype {regions.dtype}")
    regions = regions.astype(np.int64)
    y0, x0, h, w = regions.T
    bad = (y0 < 0) | (x0 < 0) | (h < 1) | (w < 1) | (y0 + h > height) | (x0 + w > width)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"regions: region {i} = {regions[i].tolist()} ([y0, x0, h, w]) is empty or lies outside the "
            f"{height}x{width} feature map; expected 0 <= y0, y0 + h <= {height}, "
            f"0 <= x0, x0 + w <= {width}, h, w >= 1"
        )
    return regions


class _Plan:
    """Static description of the three steps for one region array (all numpy, built at trace time)."""

    def __init__(self, regions: np.ndarray):
        y0, x0, h, w = (regions[:, i] for i in range(4))
        self.row_cuts = np.unique(np.concatenate([y0, y0 + h]))
        self.col_cuts = np.unique(np.concatenate([x0, x0 + w]))
        row_lo, col_lo = self.row_cuts[:-1], self.col_cuts[:-1]
        # Groups of regions with the same size; per group a grid of its row starts x column starts.
        self.groups = []  # (row-cell mask (n_i, n_row_cells), column-cell mask (n_j, n_col_cells))
        position = np.empty(len(regions), np.int64)  # where each region lands in the concatenated output
        offset = 0
        for gh, gw in np.unique(np.stack([h, w], 1), axis=0).tolist():
            members = np.flatnonzero((h == gh) & (w == gw))
            starts_y, starts_x = np.unique(y0[members]), np.unique(x0[members])
            row_mask = (row_lo[None, :] >= starts_y[:, None]) & (row_lo[None, :] < starts_y[:, None] + gh)
            col_mask = (col_lo[None, :] >= starts_x[:, None]) & (col_lo[None, :] < starts_x[:, None] + gw)
            self.groups.append((row_mask, col_mask))
            i = np.searchsorted(starts_y, y0[members])
            j = np.searchsorted(starts_x, x0[members])
            position[members] = offset + i * len(starts_x) + j
            offset += len(starts_y) * len(starts_x)
        self.total = offset
        self.position = position


@functools.lru_cache(maxsize=128)
def _plan(regions_bytes: bytes, num: int) -> _Plan:
    return _Plan(np.frombuffer(regions_bytes, np.int64).reshape(num, 4))


def _cells_by_slices(x: jnp.ndarray, row_cuts, col_cuts, dtype) -> jnp.ndarray:
    """Cell maxima as elementwise maxima of (B, C) pixel slices: reads the map once, writes the cell grid.

    Each pixel slice is cast to `dtype` on its own, so no converted copy of the map is materialised.
    """
    b, _, _, c = x.shape
    cells = []
    for y0, y1 in zip(row_cuts[:-1], row_cuts[1:], strict=True):
        for x0, x1 in zip(col_cuts[:-1], col_cuts[1:], strict=True):
            pixels = [x[:, i, j].astype(dtype) for i in range(y0, y1) for j in range(x0, x1)]
            cells.append(functools.reduce(jnp.maximum, pixels))
    return jnp.stack(cells, axis=1).reshape(b, len(row_cuts) - 1, len(col_cuts) - 1, c)


def _unpack_bf16_words(words: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """uint32 words holding two bfloat16 each -> (even, odd) channels as exact float32.

    A bf16 is the top half of its float32, so masking/shifting gives the float32 values with 32-bit integer
    ops only (little-endian: element 0 is the low half). XLA's CPU backend runs 16-bit elements in fused
    loops slowly; 32-bit lanes keep the cell pass close to the float32 one.
    """
    even = jax.lax.bitcast_convert_type(words << 16, jnp.float32)
    odd = jax.lax.bitcast_convert_type(words & jnp.uint32(0xFFFF0000), jnp.float32)
    return even, odd


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _cells_bf16_by_slices(x: jnp.ndarray, row_cuts: tuple, col_cuts: tuple) -> jnp.ndarray:
    """Cell maxima of a bfloat16 map (even C) as float32, through the uint32 view (see above)."""
    b, h, w, c = x.shape
    words = jax.lax.bitcast_convert_type(x.reshape(b, h, w, c // 2, 2), jnp.uint32)
    cells = []
    for y0, y1 in zip(row_cuts[:-1], row_cuts[1:], strict=True):
        for x0, x1 in zip(col_cuts[:-1], col_cuts[1:], strict=True):
            pixels = [_unpack_bf16_words(words[:, i, j]) for i in range(y0, y1) for j in range(x0, x1)]
            evens = functools.reduce(jnp.maximum, [even for even, _ in pixels])
            odds = functools.reduce(jnp.maximum, [odd for _, odd in pixels])
            cells.append(jnp.stack([evens, odds], axis=-1).reshape(b, c))
    return jnp.stack(cells, axis=1).reshape(b, len(row_cuts) - 1, len(col_cuts) - 1, c)


def _cells_bf16_fwd(x, row_cuts, col_cuts):
    return _cells_bf16_by_slices(x, row_cuts, col_cuts), x


def _cells_bf16_bwd(row_cuts, col_cuts, x, cotangent):
    # The gradient goes through the plain float32 formulation: same maxima, differentiable ops.
    _, vjp = jax.vjp(lambda v: _cells_by_slices(v, list(row_cuts), list(col_cuts), jnp.float32), x)
    return vjp(cotangent)


_cells_bf16_by_slices.defvjp(_cells_bf16_fwd, _cells_bf16_bwd)


def _padded_index(cuts) -> np.ndarray:
    """(n_cells, max_len) indices of each atomic interval, padded by repeating its last index."""
    lengths = np.diff(cuts)
    offsets = np.minimum(np.arange(lengths.max())[None, :], lengths[:, None] - 1)
    return (cuts[:-1, None] + offsets).astype(np.int32)


def _cells_by_gather(x: jnp.ndarray, row_cuts, col_cuts, dtype) -> jnp.ndarray:
    """Cell maxima as one padded gather + max (fused into a single reduction by XLA on GPU/TPU)."""
    rows, cols = _padded_index(row_cuts), _padded_index(col_cuts)
    gathered = x[:, rows[:, :, None, None], cols[None, None, :, :]]  # (B, nr, Lr, nc, Lc, C)
    return gathered.astype(dtype).max(axis=(2, 4))


def _masked_max(x: jnp.ndarray, mask: np.ndarray, axis: int) -> jnp.ndarray:
    """out[..., m, ...] = max over k with mask[m, k] of x[..., k, ...]; `axis` indexes k in x.

    Written as a chain of elementwise maxima over the K slices of x, each broadcast over m and masked with
    -inf, so XLA emits one loop fusion that writes only the output (a broadcast-select-reduce materialises
    the (M, K) product on CPU).
    """
    out = None
    for k in np.flatnonzero(mask.any(axis=0)):
        piece = jax.lax.slice_in_dim(x, int(k), int(k) + 1, axis=axis)  # (..., 1, ...)
        shape = [1] * x.ndim
        shape[axis] = mask.shape[0]
        term = jnp.where(mask[:, k].reshape(shape), piece, -jnp.inf)
        out = term if out is None else jnp.maximum(out, term)
    return out


def roi_max_pool(features: jnp.ndarray, regions, method: str = "auto") -> jnp.ndarray:
    """Spatial max of `features` inside every region.

    Args:
      features: (B, H, W, C) float array (float32, bfloat16 or float16), NHWC.
      regions: static (R, 4) integer array-like of [y0, x0, h, w] in cells (e.g. `rmac_regions(H, W)`); every
        region must lie inside the map. It is a Python/numpy constant, not a traced value.
      method: how the cell maxima are computed: "slices" (best on CPU), "gather" (best on GPU/TPU), or
        "auto" (by `jax.default_backend()`). Results are identical.

    Returns:
      (B, R, C) array of the input dtype: out[b, r, c] = features[b, y0:y0+h, x0:x0+w, c].max().
      Works under jit, vmap and grad (the gradient of each output goes to its region's max element).
    """
    if features.ndim != 4:
        raise ValueError(f"features: expected rank 4 (B, H, W, C), got shape {tuple(features.shape)}")
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if not jnp.issubdtype(features.dtype, jnp.floating):
        raise ValueError(f"features: expected a floating dtype, got {features.dtype}")
    _, height, width, _ = features.shape
    regions = validate_regions(regions, height, width)
    plan = _plan(regions.tobytes(), len(regions))
    if method == "auto":
        method = "slices" if jax.default_backend() == "cpu" else "gather"

    compute_dtype = jnp.float32 if jnp.dtype(features.dtype).itemsize < 4 else features.dtype
    if method == "slices" and features.dtype == jnp.bfloat16 and features.shape[-1] % 2 == 0:
        cells = _cells_bf16_by_slices(features, tuple(plan.row_cuts.tolist()), tuple(plan.col_cuts.tolist()))
    elif method == "slices":
        cells = _cells_by_slices(features, plan.row_cuts.tolist(), plan.col_cuts.tolist(), compute_dtype)
    else:
        cells = _cells_by_gather(features, plan.row_cuts, plan.col_cuts, compute_dtype)
    outputs = []
    for row_mask, col_mask in plan.groups:
        bands = _masked_max(cells, row_mask, axis=1)  # (B, n_i, n_col_cells, C)
        group = _masked_max(bands, col_mask, axis=2)  # (B, n_i, n_j, C)
        outputs.append(group.reshape(group.shape[0], -1, group.shape[-1]))
    pooled = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=1)
    if plan.total != len(regions) or not np.array_equal(plan.position, np.arange(len(regions))):
        pooled = jnp.take(pooled, plan.position, axis=1)
    return pooled.astype(features.dtype)
