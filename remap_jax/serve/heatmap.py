"""What drove a match: each R-MAC region's share of the similarity between a query and a result.

The REMAP descriptor of an image is, with region vectors r_{l,i} (layer l, region i; L2-normalised,
`Extractor.regions`), non-negative region weights a_{l,i} = max(alpha_{l,i}, 0), the whitening
z = W x + b (kernel K = W.T, bias b) and the final L2 norm:

    x = concat_l sum_i a_{l,i} r_{l,i},    y_q = z / |z|,    z = K.T x + b

Whitening is linear before the norm, so the similarity to a result descriptor y_r splits exactly into

    y_q . y_r = sum_{l,i} a_{l,i} (K_l.T r_{l,i}) . y_r / |z|  +  b . y_r / |z|

(K_l: the kernel rows of layer l's channels). `contributions` returns each region's term and the bias term
separately; they sum to the similarity. A term can be negative: after whitening a region can pull the query
away from the result. `cell_map` spreads each region's term evenly over the feature-map cells it covers
(term / area), giving a map over the query whose cells sum to the total (what the page draws).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["Contributions", "cell_map", "contributions", "head_parameters"]

# remap_jax.nn.heads.l2_normalize: x * rsqrt(|x|^2 + eps^2)
_EPS = 1e-6


@dataclasses.dataclass
class Contributions:
    """Per layer (R,) region terms, the bias term and their sum (the similarity), plus the query descriptor
    (D,) recomputed from the regions (equal to the model's own descriptor up to float rounding)."""

    regions: dict[str, np.ndarray]
    bias: float
    total: float
    descriptor: np.ndarray


def head_parameters(params: Mapping, layers: Sequence[str], region_counts: Mapping[str, int], whiten: bool
                    ) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]:
    """The REMAP head's region weights max(alpha, 0) per layer, (R,) each, and whitening kernel (sum C, D) and
    bias (D,) (None without whitening) out of its parameter tree `params` (`variables["params"]["head"]`).

    A constant alpha stored for another region count (an off-the-shelf head at another input size) is
    broadcast to `region_counts[layer]`, as the Extractor does; learned weights of the wrong size raise.
    """
    from remap_jax.nn.heads import stream_name

    alpha = {}
    for layer in layers:
        a = np.asarray(params[stream_name(layer)]["alpha"], np.float64).reshape(-1)
        r = int(region_counts[layer])
        if a.shape != (r,):
            if not np.all(a == a[0]):
                raise ValueError(f"layer {layer!r}: {a.shape[0]} learned region weights for a map with {r} "
                                 "regions; describe at the model's training image size")
            a = np.full((r,), a[0])
        alpha[layer] = np.maximum(a, 0.0)
    if not whiten:
        return alpha, None, None
    kernel = np.asarray(params["whiten"]["kernel"], np.float64)
    bias = np.asarray(params["whiten"]["bias"], np.float64)
    return alpha, kernel, bias


def contributions(region_vectors: Mapping[str, np.ndarray], alpha: Mapping[str, np.ndarray],
                  kernel: np.ndarray | None, bias: np.ndarray | None, result: np.ndarray,
                  layers: Sequence[str]) -> Contributions:
    """Splits the similarity between the query (its region vectors) and a `result` descriptor.

    Args:
      region_vectors: layer -> (R_l, C_l) the query's L2-normalised region vectors.
      alpha: layer -> (R_l,) non-negative region weights (`head_parameters`).
      kernel, bias: whitening (sum C_l, D) and (D,), or None for a head without whitening.
      result: (D,) the result's unit descriptor.
      layers: the head's layers, in concatenation order.
    Returns:
      Contributions: regions layer -> (R_l,) terms, the bias term, their total = y_q . y_r.
    """
    result = np.asarray(result, np.float64)
    projected = {}  # layer -> (R_l, D): K_l.T r_{l,i}, or r_{l,i} itself without whitening
    offset = 0
    for layer in layers:
        r = np.asarray(region_vectors[layer], np.float64)
        if kernel is None:
            projected[layer] = r
        else:
            projected[layer] = r @ kernel[offset: offset + r.shape[1]]
        offset += r.shape[1]
    if kernel is None:
        z = np.concatenate([alpha[layer] @ projected[layer] for layer in layers])
    else:
        if offset != kernel.shape[0]:
            raise ValueError(f"region vectors: {offset} channels over the layers, the whitening kernel "
                             f"expects {kernel.shape[0]}")
        z = sum(alpha[layer] @ projected[layer] for layer in layers) + bias
    if z.shape != result.shape:
        raise ValueError(f"result: descriptor of shape {result.shape}, the query's is {z.shape}")
    norm = float(np.sqrt(z @ z + _EPS * _EPS))
    terms = {}
    offset = 0
    for layer in layers:
        if kernel is None:  # the layer's block of the concatenation meets its block of the result
            c = projected[layer].shape[1]
            terms[layer] = alpha[layer] * (projected[layer] @ result[offset: offset + c]) / norm
            offset += c
        else:
            terms[layer] = alpha[layer] * (projected[layer] @ result) / norm
    bias_term = 0.0 if bias is None else float(bias @ result / norm)
    total = float(sum(t.sum() for t in terms.values()) + bias_term)
    return Contributions(terms, bias_term, total, (z / norm).astype(np.float32))


def cell_map(boxes: np.ndarray, values: np.ndarray, map_size: Sequence[int], grid: Sequence[int]
             ) -> np.ndarray:
    """Region values spread over a (gh, gw) `grid` covering the image: each region's value divided evenly
    among the grid cells whose centres fall inside its box.

    Args:
      boxes: (R, 4) int rows [y0, x0, h, w] in cells of a feature map of `map_size` = (H, W)
        (`remap_jax.nn.regions.rmac_regions`).
      values: (R,) per-region values (contributions or weights).
      grid: (gh, gw) output cells; a map of another size than the grid is scaled onto it.
    Returns:
      (gh, gw) float64 whose sum is values.sum() (every region covers at least one grid cell centre when the
      grid is at least as fine as the map).
    """
    gh, gw = int(grid[0]), int(grid[1])
    mh, mw = float(map_size[0]), float(map_size[1])
    cy = (np.arange(gh) + 0.5) / gh * mh  # grid cell centres in map cells
    cx = (np.arange(gw) + 0.5) / gw * mw
    out = np.zeros((gh, gw), np.float64)
    for (y0, x0, h, w), v in zip(np.asarray(boxes), np.asarray(values, np.float64), strict=True):
        inside = np.outer((cy >= y0) & (cy < y0 + h), (cx >= x0) & (cx < x0 + w))
        count = inside.sum()
        if count:
            out[inside] += v / count
    return out
