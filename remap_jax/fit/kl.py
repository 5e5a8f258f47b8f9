"""KL-divergence region weights: the "entropy-guided" initialisation of REMAP's ROI-stream alphas.

For every tapped layer and every R-MAC region, REMAP looks at how far apart the region's L2-normalised
descriptors are for *matching* image pairs (same landmark) and for *non-matching* pairs (different
landmarks). A region whose distances separate the two populations well is informative, one whose two
distance distributions coincide is not. The score is the Kullback-Leibler divergence

    KL(P_match || P_nonmatch) = integral p_match(d) * log(p_match(d) / p_nonmatch(d)) dd,   d in [0, 2]

(Euclidean distances between unit vectors lie in [0, 2]). The weights, shape (layers, R), initialise the
ROI streams' `alpha` (`REMAPHead(alpha_init=weights_to_alpha_init(weights, layers))`).

Density estimators (`estimator=`):

- ``"histogram"`` (default): counts in `bins` equal bins over [0, 2] plus an additive pseudo-count
  `smoothing` per bin (Laplace smoothing), then normalised. It is fast, exact for identical samples and
  never gives inf/NaN because no bin is empty after smoothing. Effects: more bins resolve finer structure
  but, with few pairs, inflate KL (sampling noise looks like divergence); more smoothing pulls both
  densities towards uniform and shrinks every KL towards 0, compressing the contrast between regions.
  With P pairs a reasonable choice is bins ~ sqrt(P) and smoothing ~ 0.5-1.
- ``"kde"``: Gaussian kernel density estimates (bandwidth by Silverman's rule, times `bandwidth_scale`,
  floored at `min_bandwidth`) evaluated on a `grid_size`-point grid over [0, 2], mixed with a fraction
  `smoothing_kde` of the uniform density so the log-ratio stays finite where a tail underflows. It has no
  binning artefacts and is smoother with few pairs, but costs O(grid_size * P) per region and, by
  smoothing, slightly under-estimates KL for very peaked distributions.

Both estimators give exactly 0 when the two samples are identical. Too few pairs raise a ValueError that
says how many were given and how many are needed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

MAX_DISTANCE = 2.0  # Euclidean distance between two unit vectors is at most 2.

__all__ = [
    "pair_distances",
    "sample_negative_pairs",
    "kl_histogram",
    "kl_kde",
    "kl_divergence",
    "region_kl_weights",
    "normalize_weights",
    "weights_to_alpha_init",
    "region_weight_maps",
]


def _check_pairs(name: str, pairs: np.ndarray, num_images: int) -> np.ndarray:
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"{name}: expected shape (P, 2) of image indices, got shape {pairs.shape}")
    if not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"{name}: expected integer image indices, got dtype {pairs.dtype}")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= num_images):
        raise ValueError(
            f"{name}: indices must lie in [0, {num_images}), got range [{pairs.min()}, {pairs.max()}]"
        )
    return pairs


def pair_distances(descriptors: np.ndarray, pairs: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Euclidean distances between region descriptors of image pairs.

    Args:
      descriptors: (N, R, C) region descriptors of N images (L2-normalised per region).
      pairs: (P, 2) integer indices into the N images.
      chunk: pairs processed at a time (bounds memory to chunk * R * C floats).

    Returns:
      (P, R) float64 distances, clipped to [0, 2].
    """
    descriptors = np.asarray(descriptors)
    if descriptors.ndim != 3:
        raise ValueError(f"descriptors: expected rank 3 (N, R, C), got shape {descriptors.shape}")
    pairs = _check_pairs("pairs", pairs, descriptors.shape[0])
    out = np.empty((pairs.shape[0], descriptors.shape[1]), np.float64)
    for start in range(0, pairs.shape[0], chunk):
        p = pairs[start:start + chunk]
        diff = descriptors[p[:, 0]].astype(np.float32) - descriptors[p[:, 1]].astype(np.float32)
        out[start:start + chunk] = np.sqrt(np.einsum("prc,prc->pr", diff, diff, dtype=np.float64))
    return np.clip(out, 0.0, MAX_DISTANCE)


def sample_negative_pairs(labels: np.ndarray, num_pairs: int, seed: int = 0,
                          candidates: np.ndarray | None = None) -> np.ndarray:
    """Sample `num_pairs` distinct pairs of images with different labels (non-matching pairs).

    Args:
      labels: (N,) landmark / cluster id of every image.
      num_pairs: how many pairs to return.
      seed: seed of the numpy generator (the only source of randomness).
      candidates: optional (M,) image indices to draw from (default: all images).

    Returns:
      (num_pairs, 2) int64 indices with labels[a] != labels[b].
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels: expected rank 1 (N,), got shape {labels.shape}")
    pool = np.arange(labels.shape[0]) if candidates is None else np.asarray(candidates, np.int64)
    if np.unique(labels[pool]).size < 2:
        raise ValueError("labels: need images of at least 2 different labels to sample non-matching pairs, "
                         f"got {np.unique(labels[pool]).size}")
    rng = np.random.default_rng(seed)
    found: list[np.ndarray] = []
    seen: set[tuple[int, int]] = set()
    attempts = 0
    while len(seen) < num_pairs:
        attempts += 1
        if attempts > 100:
            raise ValueError(f"sample_negative_pairs: could only find {len(seen)} distinct non-matching "
                             f"pairs among {pool.size} images, {num_pairs} requested")
        a = pool[rng.integers(0, pool.size, size=2 * num_pairs)]
        b = pool[rng.integers(0, pool.size, size=2 * num_pairs)]
        for x, y in zip(a[labels[a] != labels[b]], b[labels[a] != labels[b]], strict=True):
            key = (int(min(x, y)), int(max(x, y)))
            if key not in seen:
                seen.add(key)
                found.append(np.array(key))
                if len(seen) == num_pairs:
                    break
    return np.stack(found).astype(np.int64)


def _check_distances(name: str, d: np.ndarray, min_pairs: int) -> np.ndarray:
    d = np.asarray(d, np.float64)
    if d.ndim == 1:
        d = d[:, None]
    if d.ndim != 2:
        raise ValueError(f"{name}: expected shape (P,) or (P, K) of distances, got shape {d.shape}")
    if d.shape[0] < min_pairs:
        raise ValueError(f"{name}: got {d.shape[0]} pairs, need at least {min_pairs} to estimate a density")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{name}: distances contain NaN or inf")
    return np.clip(d, 0.0, MAX_DISTANCE)


def _check_populations(d_match, d_nonmatch, min_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Both populations checked by `_check_distances`, as (P, K) and (Q, K) with the same K."""
    dm = _check_distances("d_match", d_match, min_pairs)
    dn = _check_distances("d_nonmatch", d_nonmatch, min_pairs)
    if dm.shape[1] != dn.shape[1]:
        raise ValueError(f"d_match / d_nonmatch: column counts differ ({dm.shape[1]} vs {dn.shape[1]})")
    return dm, dn


def _kl_of_densities(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL of discrete distributions along axis 0 (each column sums to 1, all entries > 0)."""
    kl = np.sum(p * (np.log(p) - np.log(q)), axis=0)
    return np.maximum(kl, 0.0)  # rounding can give -1e-17 for identical inputs


def _histogram(d: np.ndarray, bins: int) -> np.ndarray:
    """(P, K) distances -> (bins, K) counts over [0, 2]."""
    idx = np.clip((d / MAX_DISTANCE * bins).astype(np.int64), 0, bins - 1)  # d = 2 goes in the last bin
    k = d.shape[1]
    flat = (idx + bins * np.arange(k)[None, :]).ravel()
    return np.bincount(flat, minlength=bins * k).reshape(k, bins).T.astype(np.float64)


def kl_histogram(d_match: np.ndarray, d_nonmatch: np.ndarray, bins: int = 32, smoothing: float = 1.0,
                 min_pairs: int = 10) -> np.ndarray:
    """KL(P_match || P_nonmatch) from smoothed histograms over [0, 2].

    Args:
      d_match: (P,) or (P, K) distances of matching pairs (K independent columns, e.g. regions).
      d_nonmatch: (Q,) or (Q, K) distances of non-matching pairs.
      bins: number of equal-width bins over [0, 2].
      smoothing: additive pseudo-count per bin (> 0), keeps every bin non-empty.
      min_pairs: fewest pairs accepted in each population.

    Returns:
      (K,) KL divergences in nats (a scalar array () for 1-D inputs).
    """
    if bins < 2:
        raise ValueError(f"bins: expected >= 2, got {bins}")
    if not smoothing > 0:
        raise ValueError(f"smoothing: expected > 0 so that no bin is empty, got {smoothing}")
    squeeze = np.ndim(d_match) == 1
    dm, dn = _check_populations(d_match, d_nonmatch, min_pairs)
    p = _histogram(dm, bins) + smoothing
    q = _histogram(dn, bins) + smoothing
    kl = _kl_of_densities(p / p.sum(0), q / q.sum(0))
    return kl[0] if squeeze else kl


def _kde_on_grid(d: np.ndarray, grid: np.ndarray, bandwidth_scale: float, min_bandwidth: float) -> np.ndarray:
    """(P, K) samples -> (G, K) Gaussian KDE evaluated on `grid` (unnormalised over the grid)."""
    n = d.shape[0]
    std = d.std(axis=0)
    iqr = np.subtract(*np.percentile(d, [75, 25], axis=0))
    spread = np.minimum(std, iqr / 1.349)
    spread = np.where(spread > 0, spread, std)  # IQR is 0 for very concentrated samples
    h = np.maximum(0.9 * spread * n ** (-0.2) * bandwidth_scale, min_bandwidth)  # Silverman's rule, (K,)
    dens = np.zeros((grid.size, d.shape[1]))
    for start in range(0, n, 512):  # bounds memory to G * 512 * K
        z = (grid[:, None, None] - d[None, start:start + 512, :]) / h[None, None, :]
        dens += np.exp(-0.5 * z * z).sum(axis=1)
    return dens / (n * h * np.sqrt(2 * np.pi))


def kl_kde(d_match: np.ndarray, d_nonmatch: np.ndarray, grid_size: int = 256, bandwidth_scale: float = 1.0,
           min_bandwidth: float = 1e-2, smoothing_kde: float = 1e-3, min_pairs: int = 10) -> np.ndarray:
    """KL(P_match || P_nonmatch) from Gaussian kernel density estimates on a grid over [0, 2].

    Args:
      d_match: (P,) or (P, K) distances of matching pairs.
      d_nonmatch: (Q,) or (Q, K) distances of non-matching pairs.
      grid_size: number of evaluation points over [0, 2].
      bandwidth_scale: multiplies Silverman's bandwidth 0.9 * min(std, IQR / 1.349) * n^(-1/5).
      min_bandwidth: lower bound of the bandwidth (distance units), so identical distances still give a
        proper density.
      smoothing_kde: weight of the uniform density mixed into both estimates (in (0, 1)), keeps log-ratios
        finite.
      min_pairs: fewest pairs accepted in each population.

    Returns:
      (K,) KL divergences in nats (a scalar array () for 1-D inputs).
    """
    if grid_size < 2:
        raise ValueError(f"grid_size: expected >= 2, got {grid_size}")
    if not 0 < smoothing_kde < 1:
        raise ValueError(f"smoothing_kde: expected a value in (0, 1), got {smoothing_kde}")
    squeeze = np.ndim(d_match) == 1
    dm, dn = _check_populations(d_match, d_nonmatch, min_pairs)
    grid = np.linspace(0.0, MAX_DISTANCE, grid_size)

    def density(d):
        f = _kde_on_grid(d, grid, bandwidth_scale, min_bandwidth)
        f = f / f.sum(0)
        return (1 - smoothing_kde) * f + smoothing_kde / grid_size

    kl = _kl_of_densities(density(dm), density(dn))
    return kl[0] if squeeze else kl


def kl_divergence(d_match: np.ndarray, d_nonmatch: np.ndarray, estimator: str = "histogram",
                  **options) -> np.ndarray:
    """Dispatch to `kl_histogram` (estimator="histogram") or `kl_kde` (estimator="kde")."""
    if estimator == "histogram":
        return kl_histogram(d_match, d_nonmatch, **options)
    if estimator == "kde":
        return kl_kde(d_match, d_nonmatch, **options)
    raise ValueError(f"estimator: expected 'histogram' or 'kde', got {estimator!r}")


def normalize_weights(weights: np.ndarray, mode: str = "mean") -> np.ndarray:
    """Rescale KL weights (layers, R) jointly over all layers and regions.

    mode: "none" keeps raw KL values (nats); "mean" divides by the mean so the average alpha is 1 (the
    R-MAC scale, which keeps learning rates tuned for alpha = 1 meaningful); "max" divides by the maximum.
    One common factor is used for all layers, so the relative weight of the layers is kept. If every weight
    is 0 (no region separates matches from non-matches) a warning is issued and alpha = 1 (plain R-MAC) is
    returned for "mean" / "max", since all-zero alphas would give an all-zero descriptor.
    """
    weights = np.asarray(weights, np.float64)
    if mode == "none":
        return weights
    if mode not in ("mean", "max"):
        raise ValueError(f"mode: expected 'none', 'mean' or 'max', got {mode!r}")
    scale = weights.mean() if mode == "mean" else weights.max()
    if not scale > 0:
        warnings.warn("all KL weights are 0: matching and non-matching distances look identical in every "
                      "region; falling back to alpha = 1 (R-MAC)", stacklevel=2)
        return np.ones_like(weights)
    return weights / scale


def region_kl_weights(region_descriptors: Mapping[str, np.ndarray], positive_pairs: np.ndarray,
                      negative_pairs: np.ndarray, layers: Sequence[str] | None = None,
                      estimator: str = "histogram", normalize: str = "mean",
                      **estimator_options) -> np.ndarray:
    """KL-divergence weight of every (layer, region).

    Args:
      region_descriptors: layer -> (N, R, C) L2-normalised region descriptors of N images (as returned by
        `remap_jax.nn.heads.region_descriptors`, stacked over images). R must be equal across layers.
      positive_pairs: (P, 2) indices of matching image pairs.
      negative_pairs: (Q, 2) indices of non-matching image pairs.
      layers: order of the output rows (default: the mapping's order).
      estimator: "histogram" or "kde" (see the module docstring for the trade-off).
      normalize: "mean" (default, average weight 1), "max" or "none" (raw KL in nats); see
        `normalize_weights`.
      **estimator_options: passed to `kl_histogram` / `kl_kde` (bins, smoothing, min_pairs, ...).

    Returns:
      (len(layers), R) float32 non-negative weights.
    """
    layers = tuple(region_descriptors) if layers is None else tuple(layers)
    if not layers:
        raise ValueError("region_descriptors: expected at least one layer, got none")
    rows = []
    for layer in layers:
        if layer not in region_descriptors:
            raise ValueError(f"layers: {layer!r} not in region_descriptors (has {list(region_descriptors)})")
        desc = region_descriptors[layer]
        if rows and np.shape(desc)[1] != rows[0].shape[0]:
            raise ValueError(f"region_descriptors[{layer!r}]: expected R={rows[0].shape[0]} regions like the "
                             f"first layer, got shape {np.shape(desc)}")
        d_pos = pair_distances(desc, positive_pairs)
        d_neg = pair_distances(desc, negative_pairs)
        rows.append(kl_divergence(d_pos, d_neg, estimator=estimator, **estimator_options))
    return normalize_weights(np.stack(rows), normalize).astype(np.float32)


def weights_to_alpha_init(weights: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
    """(layers, R) weights -> {layer: (R,) float32}, the `alpha_init` mapping of `REMAPHead`."""
    weights = np.asarray(weights, np.float32)
    if weights.ndim != 2 or weights.shape[0] != len(layers):
        raise ValueError(f"weights: expected shape ({len(layers)}, R) for layers {tuple(layers)}, "
                         f"got {weights.shape}")
    return {layer: weights[i] for i, layer in enumerate(layers)}


def region_weight_maps(weights: np.ndarray, regions: np.ndarray, height: int,
                       width: int) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Lay one layer's region weights out on the feature-map grid, one map per region size (scale).

    Args:
      weights: (R,) weights of one layer.
      regions: (R, 4) int rows [y0, x0, h, w] in feature-map cells (`remap_jax.nn.regions.rmac_regions`).
      height, width: feature-map size in cells.

    Returns:
      A list, largest regions first, of ((h, w), map) where map is (height, width) float32 holding, in each
      cell, the mean weight of the regions of that size covering the cell (NaN where none does).
    """
    weights = np.asarray(weights, np.float64)
    regions = np.asarray(regions)
    if regions.ndim != 2 or regions.shape[1] != 4 or regions.shape[0] != weights.shape[0]:
        raise ValueError(f"regions: expected shape ({weights.shape[0]}, 4) matching weights, "
                         f"got {regions.shape}")
    sizes = sorted({(int(h), int(w)) for _, _, h, w in regions}, key=lambda s: -s[0] * s[1])
    out = []
    for size in sizes:
        total = np.zeros((height, width))
        count = np.zeros((height, width))
        for (y0, x0, h, w), a in zip(regions, weights, strict=True):
            if (h, w) == size:
                total[y0:y0 + h, x0:x0 + w] += a
                count[y0:y0 + h, x0:x0 + w] += 1
        with np.errstate(invalid="ignore"):
            out.append((size, np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)))
    return out
