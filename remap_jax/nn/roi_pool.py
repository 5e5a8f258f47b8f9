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

The number of compiled ops depends on the number of region sizes (L for R-MAC), not on R. Three lowerings
of the same plan, all exact (a max returns one of its inputs):

- CPU, float32/float64: step 1 as elementwise maxima of the (B, C) pixel slices of each cell, small loop
  fusions that read the map once and write only the cell grid (a gather materialises a padded copy of the
  map on CPU, and large intermediate writes dominate there).
- CPU, bfloat16/float16: XLA's CPU backend has no 16-bit float arithmetic; it converts every bf16 element
  to float32 and back, slices included, in scalar code (far slower than reading it). So the map is viewed
  as int16 (a free bitcast of the whole map, before any slicing) and mapped to order-preserving integer
  keys pixel row by pixel row; both steps are int16 maxima, which LLVM vectorises, and only the (B, R, C)
  result is decoded. Step 1 runs as row intervals over whole rows, then column intervals, each written in
  place.
- GPU/TPU: an idempotently padded gather (a cell's pixel list is padded by repeating its last pixel,
  harmless for max) reduced in one fused reduction; 16-bit inputs are reduced in float32.

Both CPU lowerings share a custom VJP computed on the cell grid: each region's cotangent is split equally
over the pixels holding its max, as differentiating slice-and-max gives (the int16 keys have no gradient,
and differentiating the float forward takes XLA minutes to compile). The GPU/TPU lowering is
differentiated as written. Results are returned in the input dtype. Everything about the regions is
static numpy computed at trace time, so the compiled program depends only on the shapes.
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
        # Each region as a box of cells, in the caller's order: [row0, row1, col0, col1) cell indices.
        self.cell_boxes = np.stack(
            [
                np.searchsorted(self.row_cuts, y0),
                np.searchsorted(self.row_cuts, y0 + h),
                np.searchsorted(self.col_cuts, x0),
                np.searchsorted(self.col_cuts, x0 + w),
            ],
            axis=1,
        )


@functools.lru_cache(maxsize=128)
def _plan(regions_bytes: bytes, num: int) -> _Plan:
    return _Plan(np.frombuffer(regions_bytes, np.int64).reshape(num, 4))


def _cells_by_slices(x: jnp.ndarray, row_cuts, col_cuts, load) -> jnp.ndarray:
    """Cell maxima as elementwise maxima of (B, C) pixel slices: reads the map once, writes the cell grid.

    `load` maps one pixel slice to the domain the maxima are taken in (a cast, or the order key below);
    applied slice by slice, it never materialises a converted copy of the map.
    """
    b, _, _, c = x.shape
    cells = []
    for y0, y1 in zip(row_cuts[:-1], row_cuts[1:], strict=True):
        for x0, x1 in zip(col_cuts[:-1], col_cuts[1:], strict=True):
            pixels = [load(x[:, i, j]) for i in range(y0, y1) for j in range(x0, x1)]
            cells.append(functools.reduce(jnp.maximum, pixels))
    return jnp.stack(cells, axis=1).reshape(b, len(row_cuts) - 1, len(col_cuts) - 1, c)


def _cells_by_rows_then_columns(x: jnp.ndarray, row_cuts, col_cuts, load, combine=jnp.maximum,
                                chains: int = 1) -> jnp.ndarray:
    """Cell maxima (or any `combine`, e.g. sums) in two passes: row intervals over whole rows, then columns.

    Pass 1 reads every map row once as long contiguous runs and writes (B, n_row_cells, W, C); pass 2 reads
    that and writes the cell grid. Each interval's result goes into its buffer by `dynamic_update_slice`,
    which XLA performs in place (a `stack` would add a copy of the buffer). On int16 keys this beats
    `_cells_by_slices`, whose per-cell fusions read many short (C,) runs; on float32 the same two passes
    are slower than the per-cell fusions, so the float lowering keeps those (docs/performance.md, "ROI
    pooling on the CPU").

    In-place updates of one buffer make one chain of dependent ops, which XLA:CPU runs on one thread.
    `chains` > 1 splits the row intervals into that many contiguous groups, each with its own two passes
    and buffers: independent chains that the runtime runs concurrently; their cell grids are concatenated.
    """
    n_rows = len(row_cuts) - 1
    if chains > 1 and n_rows > 1:
        bounds = np.linspace(0, n_rows, min(chains, n_rows) + 1).round().astype(int).tolist()
        groups = [_cells_by_rows_then_columns(x, row_cuts[lo:hi + 1], col_cuts, load, combine)
                  for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        return jnp.concatenate(groups, axis=1)
    b, _, w, c = x.shape
    rows = None
    for r, (y0, y1) in enumerate(zip(row_cuts[:-1], row_cuts[1:], strict=True)):
        row_max = functools.reduce(combine, [load(x[:, i]) for i in range(y0, y1)])  # (B, W, C)
        if rows is None:
            rows = jnp.zeros((b, len(row_cuts) - 1, w, c), row_max.dtype)
        rows = jax.lax.dynamic_update_slice_in_dim(rows, row_max[:, None], r, axis=1)
    cells = jnp.zeros((b, len(row_cuts) - 1, len(col_cuts) - 1, c), rows.dtype)
    for q, (x0, x1) in enumerate(zip(col_cuts[:-1], col_cuts[1:], strict=True)):
        col_max = functools.reduce(combine, [rows[:, :, j] for j in range(x0, x1)])  # (B, n_row_cells, C)
        cells = jax.lax.dynamic_update_slice_in_dim(cells, col_max[:, :, None], q, axis=2)
    return cells


# Independent chains of the 16-bit cell pass (`_cells_by_rows_then_columns`): one chain runs on one thread,
# several let XLA:CPU use its threads (docs/performance.md, "ROI pooling on the CPU"). More chains than
# cores costs little and leaves room on larger CPUs.
_CPU_CHAINS = 4

_KEY_MAGNITUDE = np.int16(0x7FFF)  # every bit of a 16-bit float but the sign


def _order_key(bits: jnp.ndarray, inf_bits: int) -> jnp.ndarray:
    """int16 bit patterns of 16-bit IEEE floats -> int16 keys whose signed order is the floats' order.

    Floats are sign-magnitude: flipping the magnitude bits of the negative ones makes larger floats larger
    integers (-0 lands just below +0). NaNs (magnitude above that of inf, `inf_bits`) map to the largest key,
    so a max over keys returns NaN wherever the float max would. The map is its own inverse on non-NaNs.
    """
    key = bits ^ ((bits >> 15) & _KEY_MAGNITUDE)
    return jnp.where((bits & _KEY_MAGNITUDE) > inf_bits, _KEY_MAGNITUDE, key)


def _from_order_key(key: jnp.ndarray, dtype) -> jnp.ndarray:
    """Inverse of `_order_key` (the NaN key decodes to a NaN) as floats of `dtype`."""
    return jax.lax.bitcast_convert_type(key ^ ((key >> 15) & _KEY_MAGNITUDE), dtype)


def _pool_cells(cells: jnp.ndarray, plan: _Plan, lowest) -> jnp.ndarray:
    """(B, n_row_cells, n_col_cells, C) cell maxima -> (B, R, C) region maxima in the caller's order.

    `lowest` is the identity of max in the cells' domain (-inf for floats, the smallest key for keys).
    """
    outputs = []
    for row_mask, col_mask in plan.groups:
        bands = _masked_max(cells, row_mask, 1, lowest)  # (B, n_i, n_col_cells, C)
        group = _masked_max(bands, col_mask, 2, lowest)  # (B, n_i, n_j, C)
        outputs.append(group.reshape(group.shape[0], -1, group.shape[-1]))
    pooled = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=1)
    if plan.total != len(plan.position) or not np.array_equal(plan.position, np.arange(len(plan.position))):
        pooled = jnp.take(pooled, plan.position, axis=1)
    return pooled


def _is_16bit(dtype) -> bool:
    return jnp.dtype(dtype).itemsize == 2


def _inf_bits(dtype) -> int:
    return int(np.array(np.inf, dtype).view(np.int16))


def _cpu_forward(features: jnp.ndarray, plan: _Plan):
    """The CPU lowering: (output (B, R, C) in the input dtype, cells, pooled), the last two in the domain
    the maxima are taken in (int16 order keys for 16-bit floats, float32 or wider otherwise).

    XLA's CPU backend has no 16-bit float arithmetic: it converts each bf16/f16 element to float32 and back
    (slices included) in scalar code, far slower than reading it. Viewed as int16 (a free bitcast of the
    whole map, taken before any slicing), the cell pass and the region steps of a 16-bit map are integer
    loops that LLVM vectorises, and only the (B, R, C) result is decoded. Exact: a max picks an input.
    """
    row_cuts, col_cuts = plan.row_cuts.tolist(), plan.col_cuts.tolist()
    if _is_16bit(features.dtype):
        inf_bits = _inf_bits(features.dtype)
        bits = jax.lax.bitcast_convert_type(features, jnp.int16)
        cells = _cells_by_rows_then_columns(bits, row_cuts, col_cuts, lambda p: _order_key(p, inf_bits),
                                            chains=_CPU_CHAINS)
        pooled = _pool_cells(cells, plan, np.int16(np.iinfo(np.int16).min))
        return _from_order_key(pooled, features.dtype), cells, pooled
    compute_dtype = jnp.float32 if jnp.dtype(features.dtype).itemsize < 4 else features.dtype
    cells = _cells_by_slices(features, row_cuts, col_cuts, lambda p: p.astype(compute_dtype))
    pooled = _pool_cells(cells, plan, -jnp.inf)
    return pooled.astype(features.dtype), cells, pooled


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool_on_cpu(features: jnp.ndarray, plan: _Plan) -> jnp.ndarray:
    return _cpu_forward(features, plan)[0]


def _pool_on_cpu_fwd(features, plan):
    output, cells, pooled = _cpu_forward(features, plan)
    return output, (features, cells, pooled)


def _pool_on_cpu_bwd(plan, residuals, cotangent):
    """Each region's cotangent, split equally over the pixels that hold its max (what differentiating the
    slice-and-max formulation gives), computed on the cell grid instead of through the forward's maxima.

    Differentiating the forward directly makes XLA transpose one max per pixel into a padded full-map
    update: minutes of compilation for the 24x32 R-MAC grid. Here: pixels equal to their cell's max, their
    count per cell (one rows-then-columns sum), then per region the cells whose max is the region's max
    share its cotangent by those counts; the shares go back to the pixels at their cell's max.
    """
    features, cells, pooled = residuals
    b, height, width, c = features.shape
    r_lo, r_hi, c_lo, c_hi = (
        int(v) for v in (plan.row_cuts[0], plan.row_cuts[-1], plan.col_cuts[0], plan.col_cuts[-1])
    )
    block = features[:, r_lo:r_hi, c_lo:c_hi]  # the pixels inside some cell; the others get no gradient
    if _is_16bit(features.dtype):
        block = _order_key(jax.lax.bitcast_convert_type(block, jnp.int16), _inf_bits(features.dtype))
    else:
        block = block.astype(cells.dtype)
    cell_of_row = np.repeat(np.arange(len(plan.row_cuts) - 1), np.diff(plan.row_cuts))
    cell_of_col = np.repeat(np.arange(len(plan.col_cuts) - 1), np.diff(plan.col_cuts))

    def to_pixels(per_cell):  # (B, n_row_cells, n_col_cells, C) -> (B, r_hi - r_lo, c_hi - c_lo, C)
        return jnp.take(jnp.take(per_cell, cell_of_row, axis=1), cell_of_col, axis=2)

    at_cell_max = block == to_pixels(cells)
    ties = _cells_by_rows_then_columns(
        at_cell_max.astype(jnp.int32),
        (plan.row_cuts - r_lo).tolist(),
        (plan.col_cuts - c_lo).tolist(),
        lambda p: p,
        jnp.add,
        chains=_CPU_CHAINS,
    )  # (B, n_row_cells, n_col_cells, C): pixels at their cell's max
    cotangent = cotangent.astype(jnp.float32)
    share = jnp.zeros(cells.shape, jnp.float32)
    for r, (r0, r1, q0, q1) in enumerate(plan.cell_boxes.tolist()):
        at_max = cells[:, r0:r1, q0:q1] == pooled[:, r, None, None]  # cells holding the region's max
        count = jnp.where(at_max, ties[:, r0:r1, q0:q1], 0).sum(axis=(1, 2))  # (B, C), >= 1
        part = jnp.where(at_max, (cotangent[:, r] / count.astype(jnp.float32))[:, None, None], 0.0)
        share = jax.lax.dynamic_update_slice(share, share[:, r0:r1, q0:q1] + part, (0, r0, q0, 0))
    grad = jnp.where(at_cell_max, to_pixels(share), 0.0).astype(features.dtype)
    padding = ((0, 0), (r_lo, height - r_hi), (c_lo, width - c_hi), (0, 0))
    return (jnp.pad(grad, padding),)


_pool_on_cpu.defvjp(_pool_on_cpu_fwd, _pool_on_cpu_bwd)


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


def _masked_max(x: jnp.ndarray, mask: np.ndarray, axis: int, lowest) -> jnp.ndarray:
    """out[..., m, ...] = max over k with mask[m, k] of x[..., k, ...]; `axis` indexes k in x.

    Written as a chain of elementwise maxima over the K slices of x, each broadcast over m and masked with
    `lowest` (the identity of max in x's domain), so XLA emits one loop fusion that writes only the output
    (a broadcast-select-reduce materialises the (M, K) product on CPU).
    """
    out = None
    for k in np.flatnonzero(mask.any(axis=0)):
        piece = jax.lax.slice_in_dim(x, int(k), int(k) + 1, axis=axis)  # (..., 1, ...)
        shape = [1] * x.ndim
        shape[axis] = mask.shape[0]
        term = jnp.where(mask[:, k].reshape(shape), piece, lowest)
        out = term if out is None else jnp.maximum(out, term)
    return out


def roi_max_pool(features: jnp.ndarray, regions, method: str = "auto") -> jnp.ndarray:
    """Spatial max of `features` inside every region.

    Args:
      features: (B, H, W, C) float array (float32, bfloat16 or float16), NHWC.
      regions: static (R, 4) integer array-like of [y0, x0, h, w] in cells (e.g. `rmac_regions(H, W)`); every
        region must lie inside the map. It is a Python/numpy constant, not a traced value.
      method: how the cell maxima are computed: "slices" (best on CPU), "gather" (best on GPU/TPU), or
        "auto": each platform's best, chosen when the program is lowered (`jax.lax.platform_dependent`),
        so one traced program lowers correctly for cpu, cuda, rocm and tpu and a multi-platform export
        carries both. Results are identical, up to subnormals: float arithmetic on
        XLA:CPU flushes them to zero, slicing included; the 16-bit CPU lowering does none and keeps them.

    Returns:
      (B, R, C) array of the input dtype: out[b, r, c] = features[b, y0:y0+h, x0:x0+w, c].max().
      Works under jit, vmap and grad (the gradient of each output goes to its region's max element; on CPU,
      ties share it equally, as for slicing).
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
    if method == "slices":
        return _pool_on_cpu(features, plan)
    if method == "gather":
        return _pool_by_gather(features, plan)
    return jax.lax.platform_dependent(
        features, cpu=lambda f: _pool_on_cpu(f, plan), default=lambda f: _pool_by_gather(f, plan)
    )


def _pool_by_gather(features: jnp.ndarray, plan: _Plan) -> jnp.ndarray:
    """The GPU/TPU lowering: (B, R, C) in the input dtype, 16-bit inputs reduced in float32."""
    compute_dtype = jnp.float32 if jnp.dtype(features.dtype).itemsize < 4 else features.dtype
    cells = _cells_by_gather(features, plan.row_cuts, plan.col_cuts, compute_dtype)
    return _pool_cells(cells, plan, -jnp.inf).astype(features.dtype)
