"""The R-MAC region grid (Tolias, Sicre & Jegou, ICLR 2016), as the retrieval community implements it.

Regions are square, laid out at `levels` scales. At scale l (1-based) the side is
`floor(2 * min(H, W) / (l + 1))` cells; along the short side there are `l` regions and along the long side
`l + m - 1`, where the extra count `m - 1` (m in 2..7) is chosen once so that two neighbouring regions of
side `min(H, W)` overlap by the fraction closest to `overlap`. Region starts are evenly spread so that the
first region touches the top/left border and the last one the bottom/right border. This follows the
reference MATLAB code of Tolias et al. and `cirtorch.layers.functional.rmac`.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["rmac_regions", "num_regions"]


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected a positive integer, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive integer (>= 1), got {value}")
    return int(value)


def _extra_long_side_regions(height: int, width: int, overlap: float) -> int:
    """The `m - 1` extra regions along the long side (0 for a square map)."""
    short, long = min(height, width), max(height, width)
    if short == long:
        return 0
    steps = np.arange(2, 8, dtype=np.float64)
    stride = (long - short) / (steps - 1)
    achieved_overlap = (short * short - short * stride) / (short * short)
    return int(np.argmin(np.abs(achieved_overlap - overlap))) + 1


def _starts(extent: int, side: int, count: int) -> list[int]:
    """`count` start offsets of windows of `side` cells spread evenly over `extent` cells."""
    if count == 1:
        return [0]
    half = math.floor(side / 2 - 1)
    stride = (extent - side) / (count - 1)
    return [min(max(math.floor(half + i * stride) - half, 0), extent - side) for i in range(count)]


@functools.lru_cache(maxsize=256)
def _rmac_regions_cached(height: int, width: int, levels: int, overlap: float, include_global: bool):
    if height > width:
        # Portrait maps get the landscape grid transposed, region for region, so that region i (and the
        # weight alpha_i learned for it) keeps its place relative to the long and the short side.
        landscape = _rmac_regions_cached(width, height, levels, overlap, include_global)
        regions = np.ascontiguousarray(landscape[:, [1, 0, 3, 2]])
        regions.setflags(write=False)
        return regions
    extra = _extra_long_side_regions(height, width, overlap)
    extra_w = extra if width > height else 0
    extra_h = extra if height > width else 0
    rows: list[tuple[int, int, int, int]] = []
    if include_global:
        rows.append((0, 0, height, width))
    short = min(height, width)
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        for y0 in _starts(height, side, level + extra_h):
            for x0 in _starts(width, side, level + extra_w):
                rows.append((y0, x0, side, side))
    # Tiny maps give the same window at several scales; a duplicate would only double its weight.
    unique = list(dict.fromkeys(rows))
    regions = np.asarray(unique, dtype=np.int32).reshape(-1, 4)
    regions.setflags(write=False)
    return regions


def rmac_regions(
    height: int, width: int, levels: int = 4, overlap: float = 0.4, include_global: bool = False
) -> np.ndarray:
    """R-MAC regions of a `height` x `width` feature map.

    Args:
      height, width: feature-map size in cells (>= 1).
      levels: number of scales L (>= 1). At 24x32 (1024x768 input, stride 32) L=4 gives 40 regions.
      overlap: desired overlap of neighbouring regions, a fraction in [0, 1).
      include_global: prepend the whole-map region (0, 0, height, width).

    Returns:
      A read-only int32 array of shape (R, 4) with rows [y0, x0, h, w] in cells; every region lies inside
      the map and has h, w >= 1. Exact duplicates (tiny maps) are removed, first occurrence kept. The
      order is scale by scale, row-major for landscape and square maps; a portrait map gets the
      transposed landscape grid in the same order (region i of (H, W) is region i of (W, H) transposed),
      so per-region weights carry over between orientations. Results are cached by arguments.
    """
    height = _check_positive_int("height", height)
    width = _check_positive_int("width", width)
    levels = _check_positive_int("levels", levels)
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap: expected a fraction in [0, 1), got {overlap}")
    return _rmac_regions_cached(height, width, levels, float(overlap), bool(include_global))


def num_regions(
    height: int, width: int, levels: int = 4, overlap: float = 0.4, include_global: bool = False
) -> int:
    """Number of regions R that `rmac_regions` gives for these arguments."""
    return int(rmac_regions(height, width, levels, overlap, include_global).shape[0])
