"""SuperGlobal re-ranking of a shortlist with global descriptors alone (Shao et al., ICCV 2023).

Two steps, as in SuperGlobal's code (``modules/reranking``), run as one jitted program over a batch of
queries on the device that holds the database rows:

1. MDescAug: each of a query's top-M database descriptors ``x_i`` becomes the weighted mean of itself
   (weight 1) and its K nearest neighbours ``x_j`` within the same top M (weight ``beta * <x_i, x_j>``):
   ``x'_i = (x_i + sum_j beta s_ij x_j) / (1 + sum_j beta s_ij)``; the query scores them: ``s_i = <q, x'_i>``.
2. RerankwMDA: the query is expanded as the element-wise maximum ``e`` of the K + 1 refined descriptors
   of largest ``s_i`` (SuperGlobal's K counts the descriptor itself: its default K = 9 takes 10), and the
   top M are ranked by ``(s_i + <e, x'_i>) / 2``.

Nothing past the top M moves. Cost per query: about ``M^2 D`` multiply-adds (the M x M similarities; the
refined scores are computed as ``W (x q) / w`` from the M x M weights W, and refined rows are formed only
for the K + 1 that make the expanded query), plus gathering ``M x D`` database rows.

Order with the other post-processing of this library: alpha-DBA replaces the database vectors first
(offline), alpha-QE expands the query from the ranking of those vectors, the expanded query ranks the
database again, and SuperGlobal re-ranks the top M of that ranking using the expanded query and the DBA
database rows (``remap_jax.evaluation.benchmark.evaluate_descriptors`` does exactly this).

    from remap_jax.search.rerank import SuperGlobal, superglobal_rerank
    positions, scores = superglobal_rerank(queries, database, shortlist, SuperGlobal(m=100))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from remap_jax.search.exact import aligned_empty
from remap_jax.search.inputs import check_finite

__all__ = ["SuperGlobal", "check_options", "rerank_ranks", "superglobal_rerank"]


@dataclasses.dataclass(frozen=True)
class SuperGlobal:
    """SuperGlobal re-ranking options.

    Attributes:
      m: shortlist length re-ranked per query (the top M; needs M <= database size).
      k: neighbours per descriptor in MDescAug (0 <= k < m); the query expansion takes the top k + 1.
      beta: weight of a neighbour per unit of similarity (>= 0; 0 leaves the descriptors unrefined).

    Defaults: the best of a sweep on the demo (``benchmarks/rerank_bench.py``, README "Re-ranking"): beta = 1
    (a neighbour weighs its similarity) and K = 5 beat SuperGlobal's K = 9, beta = 0.15 there (about 10
    positives per query; swept on the test queries themselves). M = 100 is the cost target's shortlist; a
    longer one scored a little better. SuperGlobal's paper uses M = 400, K = 9, beta = 0.15 on ROxford + 1M
    distractors, where queries have far more positives.
    """

    m: int = 100
    k: int = 5
    beta: float = 1.0

    def __post_init__(self):
        for name in ("m", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"rerank {name}: expected an integer, got {value!r}")
        if self.m < 1:
            raise ValueError(f"rerank m: expected a shortlist of >= 1 database rows, got m={self.m}")
        if not 0 <= self.k < self.m:
            raise ValueError(f"rerank k: expected 0 <= k < m={self.m} (neighbours within the top m), "
                             f"got k={self.k}")
        if not (isinstance(self.beta, (int, float, np.floating)) and math.isfinite(self.beta)
                and self.beta >= 0):
            raise ValueError(f"rerank beta: expected a finite weight >= 0, got beta={self.beta!r}")

    def to_dict(self) -> dict[str, Any]:
        """``{"method": "superglobal", "m": ..., "k": ..., "beta": ...}`` (what results.json records)."""
        return {"method": "superglobal", "m": int(self.m), "k": int(self.k), "beta": float(self.beta)}

    @classmethod
    def parse(cls, text: str) -> SuperGlobal:
        """From a command-line value: ``""`` or ``"default"`` (the defaults) or ``"m=200,k=9,beta=0.15"``."""
        text = text.strip()
        if text in ("", "default", "superglobal"):
            return cls()
        fields = {}
        for item in text.split(","):
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or name not in ("m", "k", "beta"):
                raise ValueError(f"rerank: expected m=INT,k=INT,beta=FLOAT (any of them), got {text!r}")
            try:
                fields[name] = float(value) if name == "beta" else int(value)
            except ValueError:
                raise ValueError(f"rerank {name}: expected a number, got {value.strip()!r}") from None
        return cls(**fields)


def check_options(options) -> SuperGlobal:
    """``options`` if it is a :class:`SuperGlobal`, else a one-line ValueError."""
    if not isinstance(options, SuperGlobal):
        raise ValueError(f"rerank: expected a SuperGlobal(m=..., k=..., beta=...), got {options!r}")
    return options


def _superglobal_batch(queries, rows, k: int, beta):
    """(B, D) queries, (B, M, D) shortlist rows -> (B, M) shortlist positions re-ordered, (B, M) scores.

    The refined rows are ``x' = W x / w`` with W (M x M) holding 1 on the diagonal and ``beta * s_ij`` at the
    K nearest others, ``w`` W's row sums. Their scores against any vector v are ``W (x v) / w``: the only
    M x M x D product is the similarity matrix; the refined rows themselves are formed for the K + 1 that
    build the expanded query only.
    """
    import jax
    import jax.numpy as jnp

    hi = jax.lax.Precision.HIGHEST
    b, m, _ = rows.shape
    eye = jnp.eye(m, dtype=bool)
    weights = jnp.broadcast_to(eye.astype(rows.dtype), (b, m, m))  # each descriptor itself, weight 1
    if k > 0:
        sims = jnp.einsum("bmd,bnd->bmn", rows, rows, precision=hi)
        # the K nearest others (the diagonal is the weight-1 term; top_k keeps lower positions on ties)
        nb_sims, nb = jax.lax.top_k(jnp.where(eye[None], -jnp.inf, sims), k)  # (B, M, K)
        bi = jnp.arange(b)[:, None, None]
        mi = jnp.arange(m)[None, :, None]
        weights = weights + jnp.zeros((b, m, m), rows.dtype).at[bi, mi, nb].add(beta * nb_sims)
    total = jnp.sum(weights, axis=-1)  # (B, M)

    def refined_scores(v):  # (B, D) -> (B, M) <v, x'_i>
        xv = jnp.einsum("bmd,bd->bm", rows, v, precision=hi)
        return jnp.einsum("bmn,bn->bm", weights, xv, precision=hi) / total

    s = refined_scores(queries)
    _, pre = jax.lax.top_k(s, m)  # the refined ranking
    top = pre[:, : k + 1]
    top_weights = jnp.take_along_axis(weights, top[:, :, None], axis=1)  # (B, K + 1, M)
    top_rows = jnp.einsum("bkn,bnd->bkd", top_weights, rows, precision=hi)
    top_rows = top_rows / jnp.take_along_axis(total, top, axis=1)[:, :, None]
    expanded = jnp.max(top_rows, axis=1)  # (B, D)
    r = refined_scores(expanded)
    final = jnp.take_along_axis((s + r) * 0.5, pre, axis=1)  # in refined order: ties keep that order
    scores, o = jax.lax.top_k(final, m)
    return jnp.take_along_axis(pre, o, axis=1), scores


@functools.cache
def _host_rows_program(k: int):
    import jax

    def run(queries, rows, beta):
        order, scores = _superglobal_batch(queries, rows, k, beta)
        return order, scores

    return jax.jit(run)


@functools.cache
def _device_rows_program(k: int):
    import jax
    import jax.numpy as jnp

    def run(queries, database, shortlist, beta):
        rows = jnp.take(database, shortlist, axis=0)  # (B, M, D) gathered where the database lives
        finite = jnp.all(jnp.isfinite(rows), axis=-1)  # (B, M)
        order, scores = _superglobal_batch(queries, rows.astype(jnp.float32), k, beta)
        return order, scores, finite

    return jax.jit(run)


def _query_batch(num_queries: int, m: int, dim: int, budget_bytes: int = 8 << 20) -> int:
    """Queries per step: a power of two whose (B, M, D) rows and (B, M, M) matrices fit ``budget_bytes``.

    Small steps stay in cache, faster per query than large ones on a CPU.
    """
    per_query = 4 * m * (dim + 3 * m)
    b = max(1, min(256, budget_bytes // per_query))
    b = 1 << (b.bit_length() - 1)
    return min(b, 1 << max(0, num_queries - 1).bit_length())  # few compiled shapes, one query unpadded


def _gather_rows(database, ids: np.ndarray) -> np.ndarray:
    """(B, M, D) float32 rows of ``database``; 64-byte aligned for a float32 array, so that the CPU backend
    adopts the buffer without a copy (a fresh buffer per step: the device may still read the last one)."""
    if isinstance(database, np.ndarray) and database.dtype == np.float32:
        rows = aligned_empty((ids.size, database.shape[1]))
        np.take(database, ids.reshape(-1), axis=0, out=rows)
        return rows.reshape(*ids.shape, database.shape[1])
    return np.asarray(database[ids], np.float32)


def _raise_nonfinite(finite: np.ndarray, shortlist: np.ndarray, start: int) -> None:
    bad_q, bad_m = np.argwhere(~finite)[0]
    row = int(shortlist[bad_q, bad_m])
    raise ValueError(f"database: row {row} (in the shortlist of query {start + int(bad_q)}) contains NaN or "
                     "infinite values; expected finite descriptors")


def superglobal_rerank(queries, database, shortlist, options: SuperGlobal | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """SuperGlobal re-ranking of each query's top M (see the module docstring).

    Args:
      queries: (Q, D) float query descriptors (those that made the shortlist).
      database: (N, D) database rows: a numpy array or memmap (rows gathered on the host, then sent to the
        default device), a ``jax.Array`` (gathered on its own device, inside the program), or any object
        with ``shape`` and numpy fancy indexing (``database[ids] -> (..., D)``).
      shortlist: (Q, >= M) integer row numbers into ``database``, best first; only the first M are used.
      options: :class:`SuperGlobal` (None: the defaults).

    Returns:
      positions (Q, M) int64 row numbers of the re-ordered top M, best first (ties keep the refined order),
      and scores (Q, M) float32 ``(s_i + <e, x'_i>) / 2`` (a ranking score, not a cosine).
    """
    import jax

    options = check_options(SuperGlobal() if options is None else options)
    on_device = isinstance(database, jax.Array)
    shape = tuple(database.shape)
    if len(shape) != 2:
        raise ValueError(f"database: expected rank 2 (N, D), got shape {shape}")
    n, dim = shape
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries: expected shape (Q, {dim}) (the database's dimension), got "
                         f"{queries.shape}")
    queries = np.ascontiguousarray(queries, np.float32)
    check_finite("queries", queries)
    m = options.m
    if m > n:
        raise ValueError(f"rerank m: expected m <= {n} (the database size), got m={m}")
    shortlist = np.asarray(shortlist)
    nq = queries.shape[0]
    if (shortlist.ndim != 2 or shortlist.shape[0] != nq or shortlist.shape[1] < m
            or not np.issubdtype(shortlist.dtype, np.integer)):
        raise ValueError(f"shortlist: expected integer shape ({nq}, >= {m}) (the top m of each query), got "
                         f"{shortlist.dtype}{shortlist.shape}")
    shortlist = np.ascontiguousarray(shortlist[:, :m], np.int64)
    if shortlist.size and (shortlist.min() < 0 or shortlist.max() >= n):
        raise ValueError(f"shortlist: expected row numbers in 0..{n - 1}, got {shortlist.min()}.."
                         f"{shortlist.max()}")
    positions = np.empty((nq, m), np.int64)
    scores = np.empty((nq, m), np.float32)
    if nq == 0:
        return positions, scores
    bq = _query_batch(nq, m, dim)
    k, beta = int(options.k), np.float32(options.beta)
    pending = []
    for start in range(0, nq, bq):
        count = min(bq, nq - start)
        q = np.zeros((bq, dim), np.float32)
        q[:count] = queries[start : start + count]
        ids = np.zeros((bq, m), np.int64)
        ids[:count] = shortlist[start : start + count]
        if on_device:
            order, sc, finite = _device_rows_program(k)(q, database, ids.astype(np.int32), beta)
        else:
            rows = _gather_rows(database, ids)
            finite = np.isfinite(rows[:count]).all(axis=-1)
            if not finite.all():
                _raise_nonfinite(finite, ids, start)
            order, sc = _host_rows_program(k)(q, rows, beta)
            finite = None
        pending.append((start, count, ids, order, sc, finite))  # dispatched; the host gathers the next batch
    for start, count, ids, order, sc, finite in pending:
        if finite is not None and not np.asarray(finite)[:count].all():
            _raise_nonfinite(np.asarray(finite)[:count], ids, start)
        order = np.asarray(order)[:count]
        positions[start : start + count] = np.take_along_axis(ids[:count], order, axis=1)
        scores[start : start + count] = np.asarray(sc)[:count]
    return positions, scores


def rerank_ranks(ranks, queries, database, options: SuperGlobal | None = None) -> np.ndarray:
    """A (depth, Q) ranking (``remap_jax.search.ranking`` layout, column q = query q) with each column's top
    M re-ranked by :func:`superglobal_rerank`; rows M and below are unchanged. Returns a new int64 array."""
    options = check_options(SuperGlobal() if options is None else options)
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[0] < options.m:
        raise ValueError(f"ranks: expected shape (>= {options.m}, num_queries) (the top m of each query), "
                         f"got {ranks.shape}")
    positions, _ = superglobal_rerank(queries, database, ranks[: options.m].T, options)
    out = np.array(ranks, np.int64, copy=True)
    out[: options.m] = positions.T
    return out
