r"""Initialise the REMAP head from an off-the-shelf network: KL region weights and whitening.

    python -m train.init_head --config=train/configs/demo.py --workdir=/tmp/remap_init

Steps: (1) pick matching pairs from the training set's pair lists and sample as many non-matching pairs
among the same images (different landmarks); (2) run the backbone over those images and keep the
L2-normalised region descriptors of every tapped layer (cached in `workdir/region_cache/` chunk by chunk,
so an interrupted run resumes where it stopped); (3) KL(P_match || P_nonmatch) of the region distances
gives the per-(layer, region) alphas (`remap_jax.kl`); (4) the alpha-weighted descriptors, pooled exactly
as `REMAPHead` pools them, train the whitening (`remap_jax.whitening`, Lw by default, or PCA).

Writes into the workdir:
  head_init.npz        alpha/<layer> (R,), whitening_W (d, D), whitening_b (d,), and for the record layers,
                       kl (L, R) raw KL in nats, regions (R, 4), feature_shape (h, w): what
                       `config.head_init` points the trainer at (`train.train.load_head_init` reads it;
                       `load_head_init(path)` here reads everything back).
  head_params.msgpack  the head's parameter tree ({"stream_<layer>": {"alpha"}, "whiten": {"kernel",
                       "bias"}}) in flax msgpack, ready to drop into `variables["params"]["head"]`.
  region_weights.png   the alphas laid out on the feature-map grid, one row per layer, one column per scale.
  init_head.json       a summary (pairs, images, timings, KL statistics).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np
from tqdm import tqdm

from remap_jax import atomic, kl, whitening

__all__ = [
    "default_init_config",
    "HeadInit",
    "select_pairs",
    "describe_regions",
    "pool_descriptors",
    "compute_head_init",
    "head_param_tree",
    "save_head_init",
    "load_head_init",
    "save_region_weight_png",
    "write_outputs",
    "validate_init_options",
    "make_region_fn",
    "run",
]

RegionFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def default_init_config() -> ml_collections.ConfigDict:
    """Options of this command (`config.init_head` in the training config, all optional)."""
    c = ml_collections.ConfigDict()
    c.num_positive_pairs = 2000  # matching pairs drawn from the training set's pair lists; 0 = all
    c.negatives_per_positive = 1.0  # non-matching pairs per matching pair, among the same images
    c.estimator = "histogram"  # histogram | kde (see remap_jax.kl)
    c.bins = 32  # histogram bins over [0, 2]
    c.smoothing = 1.0  # histogram pseudo-count per bin
    c.kde_grid_size = 256
    c.kde_bandwidth_scale = 1.0
    c.min_pairs = 10
    c.normalize = "mean"  # mean | max | none: scale of the alphas (mean: average alpha 1, like R-MAC)
    c.whitening = "lw"  # lw (learned from matching pairs) | pca | none
    c.whitening_power = 1.0  # pca: eigenvalue shrinkage power (1 = full whitening)
    # ridge added to the eigenvalues (pca) / matching-difference covariance (lw), relative to their mean;
    # keeps the whitening defined and tame when there are fewer descriptors / pairs than dimensions.
    c.whitening_ridge = 1e-3
    c.cache_chunk = 256  # images per cached region-descriptor file
    c.cache_dtype = "float32"  # float32 | float16 (halves the cache on large runs)
    return c


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
        """layer -> (R,) alphas, the `alpha_init` argument of `REMAPHead`."""
        return kl.weights_to_alpha_init(self.alpha, self.layers)

    @property
    def whitening_init(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(W, b), the `whitening_init` argument of `REMAPHead` (None when whitening was skipped)."""
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


def describe_regions(region_fn: RegionFn, read_image: Callable[[int], np.ndarray], images: np.ndarray,
                     layers: Sequence[str], batch_size: int, cache_dir: str | None = None,
                     cache_chunk: int = 256, cache_key: str = "", cache_dtype: str = "float32",
                     progress: bool = True, workers: int = 4) -> dict[str, np.ndarray]:
    """Region descriptors of `images`, cached chunk by chunk so an interrupted run resumes.

    Args:
      region_fn: (B, H, W, 3) uint8 batch -> layer -> (B, R, C) L2-normalised region descriptors. Batches
        always have exactly `batch_size` images (the last one is padded), so a jitted function compiles once.
      read_image: dataset index -> uint8 (H, W, 3) image, already at the network's input size; called from
        `workers` threads (image decoding releases the GIL).
      images: (M,) dataset indices.
      layers: the tapped layers to keep.
      cache_dir: where chunk files go (None = no cache).
      cache_key: fingerprint of everything that changes the descriptors (network, size, levels, ...); a
        chunk written under another key or for other images is recomputed.

    Returns:
      layer -> (M, R, C) descriptors, rows in the order of `images`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    images = np.asarray(images, np.int64)
    chunks = [images[i:i + cache_chunk] for i in range(0, len(images), cache_chunk)]
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    parts: list[dict[str, np.ndarray]] = []
    cached = 0
    bar = tqdm(total=len(images), desc="region descriptors", unit="img", disable=not progress)
    pool = concurrent.futures.ThreadPoolExecutor(max(1, workers))
    try:
        start = time.perf_counter()
        computed = 0
        for k, chunk in enumerate(chunks):
            path = _chunk_path(cache_dir, k) if cache_dir else None
            hit = _read_chunk(path, cache_key, chunk, layers) if path and os.path.exists(path) else None
            if hit is not None:
                parts.append(hit)
                cached += len(chunk)
                bar.update(len(chunk))
                continue
            out: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
            for s in range(0, len(chunk), batch_size):
                idx = chunk[s:s + batch_size]
                batch = np.stack(list(pool.map(read_image, (int(i) for i in idx))))
                if len(idx) < batch_size:  # static shapes: pad with copies of the last image
                    batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(idx), axis=0)])
                result = region_fn(batch)
                for layer in layers:
                    if layer not in result:
                        raise ValueError(f"region_fn: returned layers {sorted(result)}, expected {layer!r}")
                    out[layer].append(np.asarray(result[layer], np.float32)[:len(idx)])
                computed += len(idx)
                bar.update(len(idx))
                bar.set_postfix(img_per_s=f"{computed / (time.perf_counter() - start):.1f}")
            part = {layer: np.concatenate(v).astype(cache_dtype) for layer, v in out.items()}
            if path:
                # write then rename: a killed run never leaves a half-written chunk
                atomic.save_npz(path, cache_key=np.array(cache_key), images=chunk,
                                **{f"layer/{layer}": v for layer, v in part.items()})
            parts.append(part)
    finally:
        bar.close()
        pool.shutdown()
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
                      options: ml_collections.ConfigDict | None = None) -> HeadInit:
    """KL alphas and whitening from region descriptors (N, R, C) and pairs indexing those N images."""
    o = default_init_config() if options is None else options
    estimator_options = {"min_pairs": o.min_pairs}
    if o.estimator == "histogram":
        estimator_options.update(bins=o.bins, smoothing=o.smoothing)
    elif o.estimator == "kde":
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
            elif o.whitening == "pca":
                w, b = whitening.pca_whitening(x, dim=dim, power=o.whitening_power, ridge=o.whitening_ridge)
            else:
                raise ValueError(f"init_head.whitening: expected 'lw', 'pca' or 'none', got {o.whitening!r}")
        except ValueError as e:
            if "rank" not in str(e):
                raise
            raise ValueError(f"whitening from {x.shape[0]} descriptors of dimension {x.shape[1]}: {e}. "
                             "Set config.model.out_dim lower, config.init_head.num_positive_pairs higher or "
                             "config.init_head.whitening_ridge > 0"
                             ) from e
    return HeadInit(tuple(layers), alpha, raw.astype(np.float32), w, b, np.asarray(regions, np.int32),
                    (int(feature_shape[0]), int(feature_shape[1])))


def head_param_tree(init: HeadInit) -> dict:
    """The head's parameters in `REMAPHead`'s layout (the Dense kernel is W.T)."""
    from remap_jax.heads import stream_name

    tree: dict = {stream_name(layer): {"alpha": np.asarray(a, np.float32)} for layer, a in
                  init.alpha_init.items()}
    if init.w is not None:
        tree["whiten"] = {"kernel": np.ascontiguousarray(init.w.T), "bias": init.b}
    return tree


def save_head_init(path: str, init: HeadInit) -> None:
    """Write `init` as an .npz (atomically) in the layout `train.train.load_head_init` reads.

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


def load_head_init(path: str) -> HeadInit:
    """Read a `head_init.npz` written by this command (what `config.head_init` points to)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"head_init: {path} does not exist; write it with "
                                "`python -m train.init_head --config=... --workdir=DIR` (DIR/head_init.npz)")
    with np.load(path, allow_pickle=False) as f:
        missing = {"layers", "kl", "regions", "feature_shape"} - set(f.files)
        if missing:
            raise ValueError(f"head_init: {path} lacks {sorted(missing)}; is it a train.init_head output?")
        layers = tuple(str(s) for s in f["layers"])
        alpha = np.stack([f[f"alpha/{layer}"] for layer in layers])
        has_w = "whitening_W" in f.files
        return HeadInit(layers, alpha, f["kl"], f["whitening_W"] if has_w else None,
                        f["whitening_b"] if has_w else None, f["regions"],
                        tuple(int(v) for v in f["feature_shape"]))


def save_region_weight_png(path: str, init: HeadInit, title: str = "KL region weights (alpha)") -> None:
    """Heatmap of the alphas on the feature-map grid: one row per layer, one column per region scale.

    Each cell shows the mean alpha of the regions of that scale covering it; the colour scale is shared,
    region outlines are drawn and each region's alpha is printed at its centre.
    """
    import matplotlib

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
    with open(paths["init_head.json"], "w") as f:
        json.dump(summary, f, indent=2)
    return paths


# ----------------------------------------------------------------------------------------------------------
# The command: configuration at the edge.


def _init_options(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Defaults overridden by `config.init_head` (if the config has it); unknown keys are an error."""
    options = default_init_config()
    given = config.get("init_head", None)
    if given is not None:
        unknown = set(given.keys()) - set(options.keys())
        if unknown:
            raise ValueError(f"config.init_head: unknown keys {sorted(unknown)}; known: {sorted(options)}")
        options.update(given)
    validate_init_options(options)
    return options


def validate_init_options(o: ml_collections.ConfigDict) -> None:
    """Check every `config.init_head` value before any compute; errors name the field and what is expected."""
    checks = [
        (o.num_positive_pairs >= 0, "num_positive_pairs", ">= 0 (0 = all pairs)"),
        (o.negatives_per_positive > 0, "negatives_per_positive", "> 0"),
        (o.estimator in ("histogram", "kde"), "estimator", "'histogram' or 'kde'"),
        (o.bins >= 2, "bins", ">= 2"),
        (o.smoothing > 0, "smoothing", "> 0 (no empty bins)"),
        (o.kde_grid_size >= 2, "kde_grid_size", ">= 2"),
        (o.kde_bandwidth_scale > 0, "kde_bandwidth_scale", "> 0"),
        (o.min_pairs >= 2, "min_pairs", ">= 2"),
        (o.normalize in ("mean", "max", "none"), "normalize", "'mean', 'max' or 'none'"),
        (o.whitening in ("lw", "pca", "none"), "whitening", "'lw', 'pca' or 'none'"),
        (0.0 <= o.whitening_power <= 1.0, "whitening_power", "a value in [0, 1]"),
        (o.whitening_ridge >= 0, "whitening_ridge", ">= 0"),
        (o.cache_chunk >= 1, "cache_chunk", ">= 1"),
        (o.cache_dtype in ("float32", "float16"), "cache_dtype", "'float32' or 'float16'"),
    ]
    for ok, field, expected in checks:
        if not ok:
            raise ValueError(f"config.init_head.{field}: expected {expected}, got {o[field]!r}")


def region_cache_key(config: ml_collections.ConfigDict) -> str:
    """Fingerprint of every config field that changes the region descriptors (network, weights, size, ...)."""
    m = config.model
    fields = [m.arch, m.pretrained, tuple(m.taps), m.levels, m.include_global, tuple(config.image_size),
              config.dataset, config.data_dir, m.dtype, config.seed]
    if m.pretrained and os.path.exists(m.pretrained):
        fields.append(os.path.getmtime(m.pretrained))
    return hashlib.sha1(repr(fields).encode()).hexdigest()[:16]


def make_region_fn(config: ml_collections.ConfigDict, batch_size: int, variables: Mapping | None = None):
    """The off-the-shelf network as a jitted uint8 batch -> layer -> (B, R, C) region-descriptor function.

    The backbone is exactly the one `train.main` starts from: built and initialised by the trainer's
    `build_model` / `init_variables` with `jax.random.key(config.seed)`, with the pretrained weights of
    `config.model.pretrained` when set (random otherwise). `variables` (a whole model's variables, e.g. a
    trained export) replaces that initialisation. Images are normalised on device like the trainer
    does, and batches are sharded over all devices along a 'data' mesh axis.

    Returns (region_fn, batch_size rounded up to a multiple of the device count, feature_shape (h, w) of
    the deepest tap, regions (R, 4)). The weights are initialised and the function compiled on the first
    call only.
    """
    import jax
    import jax.numpy as jnp

    from remap_jax import heads
    from remap_jax.regions import rmac_regions
    from train import train as trainer

    m = config.model
    taps = tuple(m.taps)
    plain = config.copy_and_resolve_references()
    plain.head_init = ""  # the head is not used here; a head_init path may not exist yet
    model = trainer.build_model(plain)
    backbone = model.backbone
    height, width = config.image_size
    mesh = trainer.make_mesh()
    batch_size = trainer.pad_to_multiple(batch_size, mesh.size)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    # Shapes only (no compile, no weights): enough for the region grid, and for a fully cached run.
    abstract = jax.eval_shape(lambda: backbone.init(jax.random.key(0), jnp.zeros((1, height, width, 3))))
    shapes = jax.eval_shape(lambda v, x: backbone.apply(v, x, taps=taps), abstract,
                            jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32))
    fh, fw = shapes[taps[-1]].shape[1:3]
    regions = rmac_regions(fh, fw, levels=m.levels, include_global=m.include_global)

    def describe(backbone_vars, images_uint8):
        feats = backbone.apply(backbone_vars, trainer.normalize_on_device(images_uint8), taps=taps)
        feats = {k: v.astype(jnp.float32) for k, v in feats.items()}
        return heads.region_descriptors(feats, taps, levels=m.levels, include_global=m.include_global)

    state: dict = {}

    def region_fn(batch_uint8: np.ndarray):
        if not state:  # built on first use: a run resumed entirely from the cache never initialises it
            v = variables if variables is not None else trainer.init_variables(
                model, plain, jax.random.key(config.seed))
            state["vars"] = jax.device_put({c: t["backbone"] for c, t in v.items() if "backbone" in t},
                                           replicated)
            state["fn"] = jax.jit(describe, in_shardings=(replicated, data), out_shardings=replicated)
        return jax.device_get(state["fn"](state["vars"], jax.device_put(batch_uint8, data)))

    return region_fn, batch_size, (int(fh), int(fw)), regions


def run(config: ml_collections.ConfigDict, workdir: str) -> HeadInit:
    """The command's body: see the module docstring."""
    from remap_jax.data import load_training_set
    from remap_jax.data.images import resize_to

    options = _init_options(config)  # validated: a bad value fails here, before any compute
    if config.model.head != "remap":
        print(f"note: config.model.head is {config.model.head!r}; the alphas only apply to the 'remap' head")
    layers = tuple(config.model.taps)
    t0 = time.perf_counter()
    train_set = load_training_set(config.dataset, data_dir=config.data_dir or None)
    images, pos, neg = select_pairs(train_set.labels, train_set.qidx, train_set.pidx,
                                    options.num_positive_pairs, options.negatives_per_positive, config.seed)
    print(f"init_head: {len(pos)} matching and {len(neg)} non-matching pairs over {len(images)} images of "
          f"{config.dataset!r}")
    region_fn, batch_size, feature_shape, regions = make_region_fn(config, config.describe_batch_size)
    size = tuple(config.image_size)
    t1 = time.perf_counter()
    desc = describe_regions(region_fn, lambda i: resize_to(train_set.read(i), size), images, layers,
                            batch_size, cache_dir=os.path.join(workdir, "region_cache"),
                            cache_chunk=options.cache_chunk, cache_key=region_cache_key(config),
                            cache_dtype=options.cache_dtype, workers=config.num_workers)
    t2 = time.perf_counter()
    init = compute_head_init(desc, pos, neg, layers, regions, feature_shape, out_dim=config.model.out_dim,
                             options=options)
    t3 = time.perf_counter()
    summary = {
        "dataset": config.dataset, "arch": config.model.arch,
        "backbone_weights": config.model.pretrained or f"random init (seed {config.seed})",
        "layers": list(layers), "feature_shape": list(feature_shape), "num_regions": int(regions.shape[0]),
        "num_images": int(len(images)), "num_positive_pairs": int(len(pos)),
        "num_negative_pairs": int(len(neg)), "options": options.to_dict(),
        "kl_nats": {layer: {"min": float(init.kl[i].min()), "mean": float(init.kl[i].mean()),
                            "max": float(init.kl[i].max())} for i, layer in enumerate(layers)},
        "whitening_shape": None if init.w is None else list(init.w.shape),
        "seconds": {"setup": round(t1 - t0, 2), "describe": round(t2 - t1, 2), "fit": round(t3 - t2, 2)},
    }
    paths = write_outputs(workdir, init, summary)
    for i, layer in enumerate(layers):
        k = init.kl[i]
        print(f"{layer}: KL min {k.min():.4f} mean {k.mean():.4f} max {k.max():.4f} nats, {k.size} regions")
    print(f"wrote {paths['head_init.npz']} (set config.head_init to it), {paths['head_params.msgpack']}, "
          f"{paths['region_weights.png']}")
    return init


def main(argv):
    del argv
    from absl import flags

    run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "training config file (train/configs/NAME.py)",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for the outputs and the region-descriptor cache")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
