"""Exact ranking of a database by inner product (cosine similarity for unit vectors), in the layout the
metrics read (``remap_jax.evaluation.metrics``): an int64 (K, num_queries) array, column q the database
indices for query q, best first. Optionally re-ranks each query's top M with SuperGlobal.
"""

from __future__ import annotations

import numpy as np

from remap_jax.search.exact import exact_search
from remap_jax.search.inputs import as_matrix
from remap_jax.search.rerank import check_options, rerank_ranks

__all__ = ["rank_database"]


def rank_database(qvecs, dbvecs, k: int | None = None, chunk: int | None = None, rerank=None) -> np.ndarray:
    """Exact ranking by inner product (cosine similarity for unit vectors).

    Runs through :func:`remap_jax.search.exact.exact_search`: the database is streamed through the JAX
    device in chunks and scored there; a top-k cut keeps a running top-k on the device, a deep ranking (k = N,
    or any k >= ``remap_jax.search.exact.FULL_ORDER_MIN_K``) sorts each query's scores once on the host.

    Args:
      qvecs: (num_queries, D) query descriptors.
      dbvecs: (num_db, D) database descriptors.
      k: keep only the top k (None: rank the whole database).
      chunk: database rows scored per device step (rounded up to a multiple of 128; bounds device memory);
        None: 64 MiB of database per step.
      rerank: a :class:`remap_jax.search.rerank.SuperGlobal`: each query's top M is re-ranked with these
        vectors (:func:`remap_jax.search.rerank.rerank_ranks`; ranked to depth max(k, M) first, then cut to
        k); rows past M keep their order. None: the plain ranking.

    Returns:
      int64 array (num_db or k, num_queries): column q is the database indices for query q, best first; ties
      are broken by the lower database index. It is the transpose of a C-contiguous (num_queries, k) array,
      so each query's column is contiguous in memory. Host memory: the result, plus 4 bytes per
      (query, database image) while a deep ranking is sorted (280 MB for 70 queries x 1M images).
    """
    qvecs = as_matrix("qvecs", qvecs)
    dbvecs = as_matrix("dbvecs", dbvecs)
    if qvecs.shape[1] != dbvecs.shape[1]:
        raise ValueError(f"qvecs, dbvecs: descriptor sizes differ ({qvecs.shape[1]} vs {dbvecs.shape[1]})")
    n = dbvecs.shape[0]
    if k is not None and k < 1:
        raise ValueError(f"k: expected >= 1 or None, got {k}")
    depth = n if k is None else min(int(k), n)
    if rerank is not None:
        rerank = check_options(rerank)
    if rerank is not None and rerank.m > n:
        raise ValueError(f"rerank m: expected m <= {n} (the database size), got m={rerank.m}")
    if n == 0 or qvecs.shape[0] == 0:
        return np.zeros((depth, qvecs.shape[0]), np.int64)
    options = {} if chunk is None else {"chunk_bytes": max(1, int(chunk)) * 4 * dbvecs.shape[1]}
    searched = depth if rerank is None else max(depth, rerank.m)
    positions, _ = exact_search(dbvecs, qvecs, searched, return_scores=False, **options)
    if rerank is None:
        return positions.T
    return rerank_ranks(positions.T, qvecs, dbvecs, rerank)[:depth]
