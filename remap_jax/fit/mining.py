"""Hard-negative mining for tuple training (the cnnimageretrieval / REMAP recipe).

Every epoch the trainer
1. samples `queries_per_epoch` (query, positive) pairs and a pool of `pool_size` candidate negative images
   (`sample_epoch`),
2. describes queries and pool with the current model (sharded across devices by the trainer),
3. scores every query against the pool on device and keeps the top-k most similar pool images whose label
   differs from the query's (`negative_candidates`, one jitted matmul + `lax.top_k`, optionally with the pool
   sharded over a mesh axis),
4. picks for each query the `num_negatives` hardest candidates, by default each from a different landmark
   (`select_negatives`), so one landmark cannot fill a whole tuple.

All functions are arrays in, arrays out; randomness comes from an explicit `numpy.random.Generator` seed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["sample_epoch", "negative_candidates", "select_negatives", "build_tuples"]


def sample_epoch(seed: int, epoch: int, num_pairs: int, num_images: int, queries_per_epoch: int,
                 pool_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Choose the pairs trained on in `epoch` and the pool their negatives are mined from.

    Deterministic in (seed, epoch), so a resumed run re-draws exactly the same selection.

    Args:
      seed: the run's seed.
      epoch: 0-based epoch number.
      num_pairs: number of (query, positive) pairs in the training set.
      num_images: number of images in the training set.
      queries_per_epoch: pairs to use (clipped to num_pairs).
      pool_size: candidate negatives (clipped to num_images).
    Returns:
      (pair_ids (Q,) int64 indices into the pair lists, pool_ids (P,) int64 sorted image indices).
    """
    if num_pairs < 1:
        raise ValueError(f"num_pairs: training set has no positive pairs (got {num_pairs}), expected >= 1")
    if num_images < 2:
        raise ValueError(f"num_images: expected at least 2 training images, got {num_images}")
    rng = np.random.default_rng([seed, epoch])
    pair_ids = rng.permutation(num_pairs)[: min(queries_per_epoch, num_pairs)]
    pool_ids = np.sort(rng.permutation(num_images)[: min(pool_size, num_images)])
    return pair_ids.astype(np.int64), pool_ids.astype(np.int64)


@functools.partial(jax.jit, static_argnames=("k",))
def _topk_other_labels(query_desc, pool_desc, query_labels, pool_labels, k):
    sims = jnp.einsum("qd,pd->qp", query_desc.astype(jnp.float32), pool_desc.astype(jnp.float32))
    same = query_labels[:, None] == pool_labels[None, :]
    sims = jnp.where(same, -jnp.inf, sims)
    return jax.lax.top_k(sims, k)


def negative_candidates(query_desc, pool_desc, query_labels, pool_labels, k: int, *, query_chunk: int = 1024,
                        pool_sharding=None):
    """The k most similar pool images of another label for every query, computed on device.

    Args:
      query_desc: (Q, D) query descriptors.
      pool_desc: (P, D) pool descriptors (may already be a sharded jax.Array).
      query_labels: (Q,) int landmark ids of the queries.
      pool_labels: (P,) int landmark ids of the pool images.
      k: candidates per query (clipped to P).
      query_chunk: queries scored per device call, bounding memory to query_chunk x P similarities.
      pool_sharding: optional `jax.sharding.Sharding` to place pool descriptors/labels with (for example
        `NamedSharding(mesh, P('data'))`): each device then scores its slice of the pool.
    Returns:
      (indices (Q, k) int32 positions into the pool, similarities (Q, k) float32). Positions whose
      similarity is -inf are not valid negatives (the pool had fewer than k images of other labels).
    """
    if query_desc.ndim != 2 or pool_desc.ndim != 2 or query_desc.shape[1] != pool_desc.shape[1]:
        raise ValueError(
            f"query_desc/pool_desc: expected (Q, D) and (P, D) with the same D, got shapes "
            f"{tuple(query_desc.shape)} and {tuple(pool_desc.shape)}"
        )
    if len(query_labels) != query_desc.shape[0] or len(pool_labels) != pool_desc.shape[0]:
        raise ValueError(
            f"query_labels/pool_labels: expected lengths {query_desc.shape[0]} and {pool_desc.shape[0]}, "
            f"got {len(query_labels)} and {len(pool_labels)}"
        )
    k = int(min(k, pool_desc.shape[0]))
    if k < 1:
        raise ValueError(f"k: expected >= 1 candidates and a non-empty pool, got k={k}")
    pool_labels = jnp.asarray(np.asarray(pool_labels), jnp.int32)
    if pool_sharding is not None:
        pool_desc = jax.device_put(pool_desc, pool_sharding)
        pool_labels = jax.device_put(pool_labels, pool_sharding)
    query_labels = np.asarray(query_labels, np.int32)
    idx_parts, sim_parts = [], []
    for start in range(0, query_desc.shape[0], query_chunk):
        sims, idx = _topk_other_labels(query_desc[start:start + query_chunk], pool_desc,
                                       jnp.asarray(query_labels[start:start + query_chunk]), pool_labels, k)
        idx_parts.append(np.asarray(idx))
        sim_parts.append(np.asarray(sims))
    return np.concatenate(idx_parts).astype(np.int32), np.concatenate(sim_parts).astype(np.float32)


def select_negatives(candidates: np.ndarray, similarities: np.ndarray, pool_labels: np.ndarray,
                     num_negatives: int, *, distinct_labels: bool = True) -> np.ndarray:
    """Hardest negatives per query from its ranked candidates.

    Args:
      candidates: (Q, k) pool positions, most similar first (from `negative_candidates`).
      similarities: (Q, k) their similarities; -inf marks an invalid candidate.
      pool_labels: (P,) landmark ids of the pool.
      num_negatives: N negatives per query.
      distinct_labels: take at most one negative per landmark while enough landmarks are available; the
        remaining slots are filled with the next hardest candidates regardless of landmark.
    Returns:
      (Q, N) int64 pool positions.
    Raises:
      ValueError if some query has fewer than N valid candidates (pool too small or too few landmarks).
    """
    pool_labels = np.asarray(pool_labels)
    out = np.empty((candidates.shape[0], num_negatives), np.int64)
    for q in range(candidates.shape[0]):
        valid = candidates[q][np.isfinite(similarities[q])]
        if len(valid) < num_negatives:
            raise ValueError(
                f"mining: query {q} has {len(valid)} candidate negatives of other landmarks, expected at "
                f"least num_negatives={num_negatives}; enlarge pool_size or reduce num_negatives"
            )
        if distinct_labels:
            _, first = np.unique(pool_labels[valid], return_index=True)
            chosen = list(valid[np.sort(first)][:num_negatives])
            if len(chosen) < num_negatives:
                taken = set(chosen)
                chosen += [c for c in valid if c not in taken][: num_negatives - len(chosen)]
        else:
            chosen = valid[:num_negatives]
        out[q] = chosen
    return out


def build_tuples(query_ids: np.ndarray, positive_ids: np.ndarray, negative_ids: np.ndarray) -> np.ndarray:
    """Stack image indices into training tuples.

    Args:
      query_ids: (Q,) image indices; positive_ids: (Q,); negative_ids: (Q, N).
    Returns:
      (Q, 2 + N) int64 image indices: query, positive, negatives.
    """
    query_ids = np.asarray(query_ids, np.int64)
    positive_ids = np.asarray(positive_ids, np.int64)
    negative_ids = np.asarray(negative_ids, np.int64)
    if negative_ids.ndim != 2 or not (len(query_ids) == len(positive_ids) == len(negative_ids)):
        raise ValueError(
            f"build_tuples: expected query_ids (Q,), positive_ids (Q,), negative_ids (Q, N), got shapes "
            f"{query_ids.shape}, {positive_ids.shape}, {negative_ids.shape}"
        )
    return np.concatenate([query_ids[:, None], positive_ids[:, None], negative_ids], axis=1)
