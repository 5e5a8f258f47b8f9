"""Region descriptors of training images for the head initialisation, cached chunk by chunk in a folder so an
interrupted run resumes where it stopped, and the feature grid (map size, R-MAC regions) they are laid on.

Cache files: `chunk_<k>.npz` holding `cache_key` (a string: see `region_cache_key`), `images` (n,) dataset
indices and `layer/<layer>` (n, R, C) descriptors in the cache dtype; a chunk written under another key or for
other images is recomputed.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence

import numpy as np

from remap_jax.data.images import ImageList
from remap_jax.runtime import atomic

__all__ = ["describe_regions", "feature_grid", "region_cache_key"]


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

