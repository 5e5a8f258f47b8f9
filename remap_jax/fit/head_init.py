"""Initialise the REMAP head from an off-the-shelf network: KL region weights and whitening, fitted from
region descriptors.

    init, summary = initialise_head(extractor, train_set, layers, HeadInitOptions(), workdir="/tmp/init")
    variables = init_variables(model, key, shape, backbone_variables, head_params=head_param_tree(init))

Steps: (1) pick matching pairs from the training set's pair lists and sample as many non-matching pairs
among the same images (different landmarks) (`select_pairs`); (2) describe those images with the extractor's
network and keep the L2-normalised region descriptors of every tapped layer
(`remap_jax.fit.head_regions.describe_regions`, cached chunk by chunk); (3) KL(P_match || P_nonmatch) of the
region distances gives the per-(layer, region) alphas (`remap_jax.fit.kl`); (4) the alpha-weighted
descriptors, pooled exactly as `REMAPHead` pools them, train the whitening (`remap_jax.fit.whitening`, Lw by
default, or PCA) (`compute_head_init`).

This module holds the options, the result and the fitting (steps 1, 3, 4); `remap_jax.fit.head_regions`
collects the region descriptors (step 2), `remap_jax.fit.head_init_files` reads and writes the init folder,
and `remap_jax.fit.initialise.initialise_head` runs the whole job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from remap_jax.fit import kl, whitening

__all__ = [
    "HeadInit",
    "HeadInitOptions",
    "compute_head_init",
    "pool_descriptors",
    "select_pairs",
]


@dataclasses.dataclass(frozen=True)
class HeadInitOptions:
    """How the head is initialised. Invalid values raise ValueError naming the field.

    num_positive_pairs: matching pairs drawn from the training set's pair lists; 0 = all.
    negatives_per_positive: non-matching pairs per matching pair, among the same images.
    estimator: "histogram" | "kde" (see `remap_jax.fit.kl`); bins, smoothing: histogram bins over [0, 2] and
      the pseudo-count per bin; kde_grid_size, kde_bandwidth_scale: the KDE's grid and bandwidth factor.
    min_pairs: fewer pairs than this is an error.
    normalize: "mean" (average alpha 1, the R-MAC scale) | "max" | "none" (raw nats).
    whitening: "lw" (learned from matching pairs) | "pca" | "none"; whitening_power: PCA eigenvalue
      shrinkage (1 = full whitening); whitening_ridge: added to the eigenvalues (pca) / matching-difference
      covariance (lw) relative to their mean, which keeps the whitening defined when there are fewer
      descriptors or pairs than dimensions.
    cache_chunk: images per cached region-descriptor file; cache_dtype: "float32" | "float16".
    """

    num_positive_pairs: int = 2000
    negatives_per_positive: float = 1.0
    estimator: str = "histogram"
    bins: int = 32
    smoothing: float = 1.0
    kde_grid_size: int = 256
    kde_bandwidth_scale: float = 1.0
    min_pairs: int = 10
    normalize: str = "mean"
    whitening: str = "lw"
    whitening_power: float = 1.0
    whitening_ridge: float = 1e-3
    cache_chunk: int = 256
    cache_dtype: str = "float32"

    def __post_init__(self):
        checks = [
            (self.num_positive_pairs >= 0, "num_positive_pairs", ">= 0 (0 = all pairs)"),
            (self.negatives_per_positive > 0, "negatives_per_positive", "> 0"),
            (self.estimator in ("histogram", "kde"), "estimator", "'histogram' or 'kde'"),
            (self.bins >= 2, "bins", ">= 2"),
            (self.smoothing > 0, "smoothing", "> 0 (no empty bins)"),
            (self.kde_grid_size >= 2, "kde_grid_size", ">= 2"),
            (self.kde_bandwidth_scale > 0, "kde_bandwidth_scale", "> 0"),
            (self.min_pairs >= 2, "min_pairs", ">= 2"),
            (self.normalize in ("mean", "max", "none"), "normalize", "'mean', 'max' or 'none'"),
            (self.whitening in ("lw", "pca", "none"), "whitening", "'lw', 'pca' or 'none'"),
            (0.0 <= self.whitening_power <= 1.0, "whitening_power", "a value in [0, 1]"),
            (self.whitening_ridge >= 0, "whitening_ridge", ">= 0"),
            (self.cache_chunk >= 1, "cache_chunk", ">= 1"),
            (self.cache_dtype in ("float32", "float16"), "cache_dtype", "'float32' or 'float16'"),
        ]
        for ok, field, expected in checks:
            if not ok:
                raise ValueError(f"init_head.{field}: expected {expected}, got {getattr(self, field)!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> HeadInitOptions:
        """Options from a mapping (e.g. a training config's `init_head`); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"init_head: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**dict(values))


@dataclasses.dataclass(frozen=True)
class HeadInit:
    """Result of the initialisation. Shapes: alpha/kl (L, R), w (d, D), b (d,), regions (R, 4)."""

    layers: tuple[str, ...]
    alpha: np.ndarray
    kl: np.ndarray
    w: np.ndarray | None
    b: np.ndarray | None
    regions: np.ndarray
    feature_shape: tuple[int, int]

    @property
    def alpha_init(self) -> dict[str, np.ndarray]:
        """layer -> (R,) alphas."""
        return kl.weights_to_alpha_init(self.alpha, self.layers)

    @property
    def whitening_init(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(W, b) with y = x @ W.T + b (None when whitening was skipped)."""
        return None if self.w is None else (self.w, self.b)


def select_pairs(labels: np.ndarray, qidx: np.ndarray, pidx: np.ndarray, num_positive: int,
                 negatives_per_positive: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matching and non-matching pairs over a compact set of images.

    Matching pairs come from the pair lists (`num_positive` of them at random, 0 = all); non-matching pairs
    are sampled among the same images with different labels, so no extra image has to be described.

    Returns:
      images (M,) sorted dataset indices to describe, positives (P, 2) and negatives (Q, 2) as indices
      into `images`.
    """
    qidx = np.asarray(qidx, np.int64)
    pidx = np.asarray(pidx, np.int64)
    if qidx.ndim != 1 or qidx.shape != pidx.shape or qidx.size == 0:
        raise ValueError(f"training set pairs: expected non-empty qidx/pidx of equal length, got shapes "
                         f"{qidx.shape} and {pidx.shape}")
    rng = np.random.default_rng(seed)
    pos = np.stack([qidx, pidx], axis=1)
    pos = pos[pos[:, 0] != pos[:, 1]]
    if num_positive and num_positive < len(pos):
        pos = pos[np.sort(rng.choice(len(pos), num_positive, replace=False))]
    images = np.unique(pos)
    num_negative = max(1, int(round(negatives_per_positive * len(pos))))
    neg = kl.sample_negative_pairs(labels, num_negative, seed=seed + 1, candidates=images)
    return images, np.searchsorted(images, pos), np.searchsorted(images, neg)


def pool_descriptors(region_descriptors: Mapping[str, np.ndarray], alpha: np.ndarray,
                     layers: Sequence[str]) -> np.ndarray:
    """The whitening layer's input, from region descriptors, exactly as `REMAPHead` computes it.

    Per layer: the sum of the (L2-normalised) region vectors weighted by max(alpha, 0); the layers' vectors
    are concatenated in `layers` order without further normalisation (the head L2-normalises only after
    whitening), so the alphas' scale also sets the relative weight of the layers.

    Args:
      region_descriptors: layer -> (N, R, C_l).
      alpha: (L, R) region weights.

    Returns:
      (N, sum C_l) float32.
    """
    alpha = np.maximum(np.asarray(alpha, np.float32), 0.0)
    return np.concatenate([np.einsum("nrc,r->nc", np.asarray(region_descriptors[layer], np.float32), alpha[i])
                           for i, layer in enumerate(layers)], axis=1)


def compute_head_init(region_descriptors: Mapping[str, np.ndarray], positives: np.ndarray,
                      negatives: np.ndarray, layers: Sequence[str], regions: np.ndarray,
                      feature_shape: tuple[int, int], out_dim: int = 0,
                      options: HeadInitOptions | None = None) -> HeadInit:
    """KL alphas and whitening from region descriptors (N, R, C) and pairs indexing those N images."""
    o = options or HeadInitOptions()
    estimator_options: dict[str, Any] = {"min_pairs": o.min_pairs}
    if o.estimator == "histogram":
        estimator_options.update(bins=o.bins, smoothing=o.smoothing)
    else:
        estimator_options.update(grid_size=o.kde_grid_size, bandwidth_scale=o.kde_bandwidth_scale)
    raw = kl.region_kl_weights(region_descriptors, positives, negatives, layers=layers,
                               estimator=o.estimator, normalize="none", **estimator_options)
    alpha = kl.normalize_weights(raw, o.normalize).astype(np.float32)
    w = b = None
    if o.whitening != "none":
        x = pool_descriptors(region_descriptors, alpha, layers)
        dim = out_dim or x.shape[1]
        try:
            if o.whitening == "lw":
                w, b = whitening.learned_whitening(x, positives[:, 0], positives[:, 1], dim=dim,
                                                   ridge=o.whitening_ridge)
            else:
                w, b = whitening.pca_whitening(x, dim=dim, power=o.whitening_power, ridge=o.whitening_ridge)
        except ValueError as e:
            if "rank" not in str(e):
                raise
            raise ValueError(f"whitening from {x.shape[0]} descriptors of dimension {x.shape[1]}: {e}. "
                             "Use a smaller out_dim, more pairs (init_head.num_positive_pairs) or "
                             "init_head.whitening_ridge > 0") from e
    return HeadInit(tuple(layers), alpha, raw.astype(np.float32), w, b, np.asarray(regions, np.int32),
                    (int(feature_shape[0]), int(feature_shape[1])))

