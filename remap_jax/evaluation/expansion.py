"""Alpha query expansion (alpha-QE) and alpha database-side augmentation (alpha-DBA) of global descriptors
(Radenovic et al.): a vector becomes the L2-normalised sum of itself and its top-k neighbours weighted by
similarity^alpha. Both take and return float32 (N, D) unit descriptors; alpha-DBA replaces the database
first (offline), alpha-QE then expands each query from its ranking of that database.
"""

from __future__ import annotations

import numpy as np

from remap_jax.search.inputs import as_matrix
from remap_jax.search.ranking import rank_database

__all__ = ["alpha_database_augmentation", "alpha_query_expansion"]


def _weighted_neighbour_sum(vecs, neighbours, sims, alpha: float) -> np.ndarray:
    """L2(vec + sum_i max(sim_i, 0)^alpha * neighbour_i) for each row."""
    weights = np.maximum(sims, 0.0) ** alpha  # (N, k)
    out = vecs + np.einsum("nk,nkd->nd", weights, neighbours)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def alpha_query_expansion(qvecs, dbvecs, k: int = 2, alpha: float = 3.0, ranks=None) -> np.ndarray:
    """alpha-QE (Radenovic et al.): each query becomes L2(q + sum of its top-k database neighbours weighted
    by similarity^alpha). ``k=0`` returns the queries unchanged (normalised).

    Args:
      qvecs: (Q, D) unit query descriptors; dbvecs: (N, D) unit database descriptors.
      ranks: optional (>=k, Q) ranking already computed for these queries (saves a search).

    Returns:
      (Q, D) float32 expanded, L2-normalised query descriptors.
    """
    qvecs = as_matrix("qvecs", qvecs)
    dbvecs = as_matrix("dbvecs", dbvecs)
    if k < 0 or alpha < 0:
        raise ValueError(f"k, alpha: expected non-negative values, got k={k}, alpha={alpha}")
    k = min(int(k), dbvecs.shape[0])
    if ranks is None:
        ranks = rank_database(qvecs, dbvecs, k=max(k, 1))
    ranks = np.asarray(ranks)
    if ranks.shape[0] < k or ranks.shape[1] != qvecs.shape[0]:
        raise ValueError(f"ranks: expected shape (>= {k}, {qvecs.shape[0]}), got {ranks.shape}")
    top = ranks[:k].T  # (Q, k)
    neighbours = dbvecs[top]  # (Q, k, D)
    sims = np.einsum("qd,qkd->qk", qvecs, neighbours)
    return _weighted_neighbour_sum(qvecs, neighbours, sims, alpha).astype(np.float32)


def alpha_database_augmentation(dbvecs, k: int = 2, alpha: float = 3.0, chunk: int = 4096) -> np.ndarray:
    """alpha-DBA: every database vector becomes L2(x + sum of its top-k other database neighbours weighted
    by similarity^alpha). Exact all-pairs search in chunks (quadratic: meant for databases up to ~100k).

    Returns:
      (N, D) float32 augmented, L2-normalised database descriptors.
    """
    dbvecs = as_matrix("dbvecs", dbvecs)
    n = dbvecs.shape[0]
    if k < 0 or alpha < 0:
        raise ValueError(f"k, alpha: expected non-negative values, got k={k}, alpha={alpha}")
    k = min(int(k), n - 1)
    if k == 0:
        return dbvecs / np.maximum(np.linalg.norm(dbvecs, axis=1, keepdims=True), 1e-12)
    out = np.empty_like(dbvecs)
    for start in range(0, n, chunk):
        block = dbvecs[start : start + chunk]
        sims = block @ dbvecs.T  # (b, N)
        rows = np.arange(block.shape[0])
        sims[rows, start + rows] = -np.inf  # the vector itself is the "1 x" term, not a neighbour
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        out[start : start + block.shape[0]] = _weighted_neighbour_sum(block, dbvecs[top], top_sims, alpha)
    return out
