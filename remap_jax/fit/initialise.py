"""The whole head initialisation: pairs -> region descriptors (cached) -> KL alphas + whitening -> the init
folder (see `remap_jax.fit.head_init` for the steps, `remap_jax.fit.head_init_files` for the files)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence

from remap_jax.fit.head_init import HeadInit, HeadInitOptions, compute_head_init, select_pairs
from remap_jax.fit.head_init_files import write_outputs
from remap_jax.fit.head_regions import describe_regions, feature_grid, region_cache_key

__all__ = ["initialise_head"]


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
