"""Initialise the REMAP head from an off-the-shelf network: KL region weights and whitening.

    init, summary = initialise_head(extractor, train_set, layers, HeadInitOptions(), workdir="/tmp/init")
    variables = init_variables(model, key, shape, backbone_variables, head_params=head_param_tree(init))

Steps: (1) pick matching pairs from the training set's pair lists and sample as many non-matching pairs
among the same images (different landmarks) (`select_pairs`); (2) describe those images with the extractor's
network and keep the L2-normalised region descriptors of every tapped layer (`describe_regions`, cached in
`region_cache/` chunk by chunk, so an interrupted run resumes where it stopped); (3) KL(P_match ||
P_nonmatch) of the region distances gives the per-(layer, region) alphas (`remap_jax.fit.kl`); (4) the
alpha-weighted descriptors, pooled exactly as `REMAPHead` pools them, train the whitening
(`remap_jax.fit.whitening`, Lw by default, or PCA) (`compute_head_init`).

Files (`write_outputs`):
  head_init.npz        alpha/<layer> (R,), whitening_W (d, D), whitening_b (d,), and for the record layers,
                       kl (L, R) raw KL in nats, regions (R, 4), feature_shape (h, w): what a training
                       config's `head_init` points at (`load_head_init` reads it back).
  head_params.msgpack  the head's parameter tree ({"stream_<layer>": {"alpha"}, "whiten": {"kernel",
                       "bias"}}) in flax msgpack, ready to drop into `variables["params"]["head"]`.
  region_weights.png   the alphas laid out on the feature-map grid, one row per layer, one column per scale.
  init_head.json       a summary (pairs, images, timings, KL statistics).
"""

from __future__ import annotations

import dataclasses
import os
import time
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from remap_jax.data.images import ImageList
from remap_jax.fit import kl, whitening
from remap_jax.runtime import atomic
from remap_jax.runtime.extras import require

__all__ = [
    "HeadInit",
    "HeadInitOptions",
    "compute_head_init",
    "describe_regions",
    "head_param_tree",
    "initialise_head",
    "load_head_init",
    "pool_descriptors",
    "region_cache_key",
    "save_head_init",
    "save_region_weight_png",
    "select_pairs",
    "write_outputs",
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


def _chunk_path(cache_dir: str, k: int) -> str:
    return os.path.join(cache_dir, f"chunk_{k:05d}.npz")


def _read_chunk(path: str, cache_key: str, chunk: np.ndarray, layers: Sequence[str]):
    """A cached chunk's descriptors, or None if it is for other images / another setting, or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["cache_key"]) != cache_key or not np.array_equal(f["images"], chunk):
                return None
            return {layer: f[f"layer/{layer}"] for layer in layers}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        print(f"region cache: ignoring unreadable {path} ({type(e).__name__}: {e}); recomputing it")
        return None


def describe_regions(extractor, read, images: np.ndarray, layers: Sequence[str], *,
                     cache_dir: str | None = None, cache_chunk: int = 256, cache_key: str = "",
                     cache_dtype: str = "float32", progress: bool = True) -> dict[str, np.ndarray]:
    """Region descriptors of dataset images, cached chunk by chunk so an interrupted run resumes.

    Args:
      extractor: a `remap_jax.Extractor` (anything with `.regions(images, progress=...)` returning layer ->
        (n, R, C)); its resizing decides the input size.
      read: dataset index -> uint8 (H, W, 3) image (e.g. `TrainingSet.read`).
      images: (M,) dataset indices.
      layers: the tapped layers to keep.
      cache_dir: where chunk files go (None = no cache).
      cache_key: fingerprint of everything that changes the descriptors (network, size, dataset, ...); a
        chunk written under another key or for other images is recomputed.

    Returns:
      layer -> (M, R, C) float32 descriptors, rows in the order of `images`.
    """
    images = np.asarray(images, np.int64)
    chunks = [images[i:i + cache_chunk] for i in range(0, len(images), cache_chunk)]
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    parts: list[dict[str, np.ndarray]] = []
    cached = computed = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(images), desc="region descriptors", unit="img", dynamic_ncols=True)
    try:
        for k, chunk in enumerate(chunks):
            path = _chunk_path(cache_dir, k) if cache_dir else None
            hit = _read_chunk(path, cache_key, chunk, layers) if path and os.path.exists(path) else None
            if hit is not None:
                parts.append(hit)
                cached += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                continue
            result = extractor.regions(ImageList(read, chunk), progress=bar.update if bar else False)
            missing = [layer for layer in layers if layer not in result]
            if missing:
                raise ValueError(f"region descriptors: got layers {sorted(result)}, expected {missing[0]!r}")
            part = {layer: np.asarray(result[layer]).astype(cache_dtype) for layer in layers}
            computed += len(chunk)
            if path:
                atomic.save_npz(path, cache_key=np.array(cache_key), images=chunk,
                                **{f"layer/{layer}": v for layer, v in part.items()})
            parts.append(part)
    finally:
        if bar is not None:
            bar.close()
    if progress and cached:
        print(f"region descriptors: {cached} images read from the cache in {cache_dir}, {computed} computed")
    return {layer: np.concatenate([p[layer] for p in parts]).astype(np.float32) for layer in layers}


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


def head_param_tree(init: HeadInit) -> dict:
    """The head's parameters in `REMAPHead`'s layout (the Dense kernel is W.T): `head_params` of
    `remap_jax.model.init_variables`."""
    from remap_jax.nn.heads import stream_name

    tree: dict = {stream_name(layer): {"alpha": np.asarray(a, np.float32)} for layer, a in
                  init.alpha_init.items()}
    if init.w is not None:
        tree["whiten"] = {"kernel": np.ascontiguousarray(init.w.T), "bias": init.b}
    return tree


def save_head_init(path: str, init: HeadInit) -> None:
    """Write `init` as an .npz (atomically) in the layout `load_head_init` reads.

    Keys: `alpha/<layer>` (R,) per layer, `whitening_W` (d, D) and `whitening_b` (d,) when whitening was
    fitted, plus `layers`, `kl` (L, R) raw KL in nats, `regions` (R, 4) and `feature_shape` (2,) for the
    record and the heatmap.
    """
    arrays = {f"alpha/{layer}": a for layer, a in init.alpha_init.items()}
    arrays.update(layers=np.array(init.layers), kl=init.kl, regions=init.regions,
                  feature_shape=np.array(init.feature_shape))
    if init.w is not None:
        arrays.update(whitening_W=init.w, whitening_b=init.b)
    atomic.save_npz(path, **arrays)


def load_head_init(path: str, layers: Sequence[str] | None = None) -> HeadInit:
    """Read a `head_init.npz`; with `layers`, check it was computed for those layers (in that order)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"head_init: {path} does not exist; write it with "
                                "`python -m train.init_head --config=... --workdir=DIR` (DIR/head_init.npz)")
    with np.load(path, allow_pickle=False) as f:
        missing = {"layers", "kl", "regions", "feature_shape"} - set(f.files)
        if missing:
            raise ValueError(f"head_init: {path} lacks {sorted(missing)}; is it a train.init_head output?")
        stored = tuple(str(s) for s in f["layers"])
        alpha = np.stack([f[f"alpha/{layer}"] for layer in stored])
        has_w = "whitening_W" in f.files
        init = HeadInit(stored, alpha, f["kl"], f["whitening_W"] if has_w else None,
                        f["whitening_b"] if has_w else None, f["regions"],
                        tuple(int(v) for v in f["feature_shape"]))
    if layers is not None and tuple(layers) != stored:
        raise ValueError(f"head_init {path!r}: computed for layers {list(stored)}, but the model taps "
                         f"{list(layers)}; rerun train.init_head with this config")
    return init


def save_region_weight_png(path: str, init: HeadInit, title: str = "KL region weights (alpha)") -> None:
    """Heatmap of the alphas on the feature-map grid: one row per layer, one column per region scale.

    Each cell shows the mean alpha of the regions of that scale covering it; the colour scale is shared,
    region outlines are drawn and each region's alpha is printed at its centre.
    """
    matplotlib = require("matplotlib", "train", "the region-weight plot (region_weights.png)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    h, w = init.feature_shape
    per_layer = [kl.region_weight_maps(init.alpha[i], init.regions, h, w) for i in range(len(init.layers))]
    cols = max(len(m) for m in per_layer)
    vmin, vmax = float(np.min(init.alpha)), float(np.max(init.alpha))
    fig, axes = plt.subplots(len(init.layers), cols, squeeze=False,
                             figsize=(3.2 * cols * max(w / h, 0.5), 3.0 * len(init.layers) + 0.6))
    image = None
    for i, (layer, maps) in enumerate(zip(init.layers, per_layer, strict=True)):
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(maps):
                ax.axis("off")
                continue
            size, grid = maps[j]
            image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
            for (y0, x0, rh, rw), a in zip(init.regions, init.alpha[i], strict=True):
                if (int(rh), int(rw)) == size:
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), rw, rh, fill=False, lw=0.6, ec="white"))
                    ax.text(x0 + rw / 2 - 0.5, y0 + rh / 2 - 0.5, f"{a:.2f}", ha="center", va="center",
                            fontsize=6, color="white")
            ax.set_title(f"{layer}  regions {size[0]}x{size[1]}", fontsize=8)
    fig.suptitle(f"{title}; map {h}x{w} cells", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="alpha")
    with atomic.atomic_write(path) as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def write_outputs(workdir: str, init: HeadInit, summary: dict) -> dict[str, str]:
    """Write head_init.npz, head_params.msgpack, region_weights.png and init_head.json into workdir."""
    from flax import serialization

    os.makedirs(workdir, exist_ok=True)
    paths = {name: os.path.join(workdir, name) for name in
             ("head_init.npz", "head_params.msgpack", "region_weights.png", "init_head.json")}
    save_head_init(paths["head_init.npz"], init)
    with atomic.atomic_write(paths["head_params.msgpack"]) as f:
        f.write(serialization.msgpack_serialize(head_param_tree(init)))
    save_region_weight_png(paths["region_weights.png"], init)
    atomic.write_json(paths["init_head.json"], summary, indent=2)
    return paths


def feature_grid(extractor, layers: Sequence[str]) -> tuple[tuple[int, int], np.ndarray]:
    """((h, w) of the deepest tapped layer's map, its R-MAC regions (R, 4)) at the extractor's image size."""
    import jax
    import jax.numpy as jnp

    from remap_jax.describe.pipeline import target_size
    from remap_jax.model import RetrievalModel
    from remap_jax.nn.regions import rmac_regions

    model, head = extractor.model, extractor.model.head
    size = target_size(*extractor.image_size, extractor.image_size, extractor.resize, extractor.bucket)
    features = lambda v, x: model.apply(v, x, method=RetrievalModel.features)  # noqa: E731
    shapes = jax.eval_shape(features, extractor.variables, jax.ShapeDtypeStruct((1, *size, 3), jnp.uint8))
    h, w = shapes[layers[-1]].shape[1:3]
    return (int(h), int(w)), rmac_regions(h, w, head.levels, head.overlap, head.include_global)


def region_cache_key(extractor, train_set, name: str = "") -> str:
    """The region cache's key for describing `train_set` with `extractor`: the extractor's fingerprint,
    `name` (e.g. the dataset name) and a digest of the training set's labels and pairs, so that a rebuilt or
    re-versioned dataset of the same name (e.g. synthetic_landmarks/hard 1.2.0 -> 1.3.0) is never answered
    from descriptors of the old one."""
    import hashlib

    h = hashlib.sha1()
    for a in (train_set.labels, train_set.qidx, train_set.pidx):
        h.update(np.ascontiguousarray(np.asarray(a, np.int64)).tobytes())
    return f"{extractor.fingerprint()}|{name}|{h.hexdigest()[:12]}"


def initialise_head(extractor, train_set, layers: Sequence[str], options: HeadInitOptions, *, workdir: str,
                    out_dim: int = 0, seed: int = 0, cache_key: str = "",
                    summary: Mapping | None = None) -> tuple[HeadInit, dict]:
    """The whole job: pairs -> region descriptors (cached in workdir/region_cache) -> KL alphas + whitening
    -> the files of `write_outputs` in `workdir`. Returns (HeadInit, the summary written to init_head.json).

    extractor: describes training images as the model will see them (e.g. `resize="exact"` at the training
    size); its fingerprint plus `cache_key` (e.g. the dataset name) keys the region cache.
    """
    t0 = time.perf_counter()
    images, pos, neg = select_pairs(train_set.labels, train_set.qidx, train_set.pidx,
                                    options.num_positive_pairs, options.negatives_per_positive, seed)
    print(f"init_head: {len(pos)} matching and {len(neg)} non-matching pairs over {len(images)} images")
    feature_shape, regions = feature_grid(extractor, layers)
    key = region_cache_key(extractor, train_set, cache_key)
    t1 = time.perf_counter()
    desc = describe_regions(extractor, train_set.read, images, layers,
                            cache_dir=os.path.join(workdir, "region_cache"), cache_chunk=options.cache_chunk,
                            cache_key=key, cache_dtype=options.cache_dtype)
    t2 = time.perf_counter()
    init = compute_head_init(desc, pos, neg, layers, regions, feature_shape, out_dim=out_dim, options=options)
    t3 = time.perf_counter()
    record = {
        **dict(summary or {}),
        "layers": list(layers), "feature_shape": list(feature_shape), "num_regions": int(regions.shape[0]),
        "num_images": int(len(images)), "num_positive_pairs": int(len(pos)),
        "num_negative_pairs": int(len(neg)), "options": dataclasses.asdict(options),
        "kl_nats": {layer: {"min": float(init.kl[i].min()), "mean": float(init.kl[i].mean()),
                            "max": float(init.kl[i].max())} for i, layer in enumerate(layers)},
        "whitening_shape": None if init.w is None else list(init.w.shape),
        "seconds": {"setup": round(t1 - t0, 2), "describe": round(t2 - t1, 2), "fit": round(t3 - t2, 2)},
    }
    write_outputs(workdir, init, record)
    return init, record
