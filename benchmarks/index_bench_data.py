"""The synthetic databases of `benchmarks/index_bench.py`: clustered unit vectors shaped like landmark
descriptors (`synthetic`, the default) or plain Gaussian blobs (`blobs`, --blobs)."""

from __future__ import annotations

import numpy as np


def synthetic(
    n: int, n_queries: int, d: int, clusters: int, views: int, spread: float, noise: float, seed: int
):
    """Clustered unit vectors shaped like landmark descriptors, generated in blocks (bounded memory).

    ``clusters`` landmark centres; around each, scenes (``n / views`` in all, offset ``spread``); around each
    scene, its views (offset ``noise``): a database image has about ``views`` near neighbours, then its
    landmark, then everything else. Dimension j is scaled by (1 + j)^-0.5 (a decaying, PCA-like spectrum).
    Queries are new views of database scenes. Returns float32 (n, d) and (n_queries, d), rows L2-normalised.
    """
    rng = np.random.default_rng(seed)
    scale = (1.0 + np.arange(d, dtype=np.float32)) ** -0.5
    centers = rng.standard_normal((clusters, d), dtype=np.float32) * scale
    num_scenes = max(1, n // views)
    scenes = centers[rng.integers(0, clusters, num_scenes)]
    scenes += spread * rng.standard_normal((num_scenes, d), dtype=np.float32) * scale

    def draw(count, rng):
        out = np.empty((count, d), np.float32)
        for s in range(0, count, 65536):
            m = min(65536, count - s)
            x = scenes[rng.integers(0, num_scenes, m)]
            x += noise * rng.standard_normal((m, d), dtype=np.float32) * scale
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s : s + m] = x
        return out

    return draw(n, rng), draw(n_queries, np.random.default_rng(seed + 1))


def blobs(n: int, n_queries: int, d: int, clusters: int, noise: float, query_noise: float, seed: int):
    """Plain clustered unit vectors (``--blobs``): ``clusters`` Gaussian centres, each row a centre plus
    ``noise`` per dimension; queries are database rows plus ``query_noise`` per dimension, re-normalised.
    Returns float32 (n, d) and (n_queries, d)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d), dtype=np.float32)
    db = np.empty((n, d), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        x = centers[rng.integers(0, clusters, m)] + noise * rng.standard_normal((m, d), dtype=np.float32)
        db[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = db[rng.choice(n, n_queries, replace=False)]
    q = q + query_noise * rng.standard_normal(q.shape, dtype=np.float32) / np.sqrt(d)
    return db, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
