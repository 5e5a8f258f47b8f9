"""Exact (brute-force) inner-product top-k over a float32 database, on the default JAX device.

The database is streamed through a jit-compiled chunked matmul (``chunk_bytes`` of database per step), so
memory stays bounded: a 1M x 2048 float32 database needs its 8 GB plus about ``chunk_bytes`` per step.
Below ``FULL_ORDER_MIN_K`` neighbours a running top-k is merged on the device; from there on (a deep k, up
to the whole database) every score becomes a uint32 order key on the device and each query's keys are
sorted once on the host.

    positions, scores = exact_search(database, queries, k=100)   # (Q, 100) int64 rows, (Q, 100) float32
"""

from __future__ import annotations

import functools
import os

import numpy as np

# From this many neighbours per query on, exact_search computes every score and sorts each query's row once
# on the host (numpy's SIMD sort) instead of a running top-k that re-sorts k entries per chunk (XLA's CPU
# top-k slows with k). Both cost about linearly in N; the crossover was measured on a 2-core CPU
# (docs/performance.md).
FULL_ORDER_MIN_K = 4096


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.cache
def _exact_step_fn(k: int):
    """Jitted merge of one database chunk into a running top-k; compiled once per (k, shapes)."""
    import jax
    import jax.numpy as jnp

    def step(best_scores, best_pos, queries, chunk, offset, n_valid):
        # queries (Qb, D), chunk (C, D): scores (Qb, C). HIGHEST keeps float32 on GPU/TPU too.
        scores = jnp.matmul(queries, chunk.T, precision=jax.lax.Precision.HIGHEST)
        col = jnp.arange(chunk.shape[0], dtype=jnp.int32)
        scores = jnp.where(col[None, :] < n_valid, scores, -jnp.inf)
        s, i = jax.lax.top_k(scores, min(k, chunk.shape[0]))
        # Running results first: top_k keeps the lower index among ties, so ties go to earlier rows.
        all_s = jnp.concatenate([best_scores, s], axis=1)
        all_p = jnp.concatenate([best_pos, i + offset], axis=1)
        top_s, sel = jax.lax.top_k(all_s, k)
        return top_s, jnp.take_along_axis(all_p, sel, axis=1)

    return jax.jit(step)


@functools.cache
def _order_key_fn():
    """Jitted (Qb, D) x (C, D) -> (Qb, C) uint32 keys that sort ascending as the float32 scores descend."""
    import jax
    import jax.numpy as jnp

    def keys(queries, chunk):
        scores = jnp.matmul(queries, chunk.T, precision=jax.lax.Precision.HIGHEST)
        u = jax.lax.bitcast_convert_type(scores, jnp.uint32)
        sign = jnp.uint32(0x80000000)
        u = jnp.where(u == sign, jnp.uint32(0), u)  # -0.0 ties with +0.0, as in a float comparison
        # Negative floats: a larger bit pattern is a smaller score, keep it (keys >= 2^31). Non-negative: a
        # larger pattern is a larger score, flip it into 0 .. 2^31 - 1 so that larger scores come first.
        return jnp.where(u >= sign, u, jnp.uint32(0x7FFFFFFF) - u)

    return jax.jit(keys)


def _scores_of_keys(key: np.ndarray) -> np.ndarray:
    """Inverse of the order key: uint32 keys -> float32 scores (same shape)."""
    key = np.array(key, np.uint32)
    np.subtract(np.uint32(0x7FFFFFFF), key, out=key, where=key < np.uint32(0x80000000))
    return key.view(np.float32)


def aligned_empty(shape: tuple[int, int], align: int = 64) -> np.ndarray:
    """An uninitialised float32 array whose data starts on an ``align``-byte boundary."""
    count = int(np.prod(shape))
    raw = np.empty(count + align // 4, np.float32)
    skip = (-raw.ctypes.data % align) // 4
    return raw[skip : skip + count].reshape(shape)


def _database_chunks(database: np.ndarray, rows: int, progress: bool):
    """Yields (start, valid rows, device chunk (rows, D) float32); only the last chunk is zero-padded.

    A chunk may alias a staging buffer that is refilled two chunks later: callers must wait for the work they
    dispatched on a chunk (``jax.block_until_ready``) before taking the next one. The staging buffers are
    64-byte aligned because the CPU backend then adopts them without a copy (``device_put`` of an unaligned
    array copies into freshly allocated memory, several times slower than refilling a buffer); a chunk of a
    float32 database that is already aligned (a memory-mapped .npy) is adopted directly. Staging copies run
    one chunk ahead on a thread, while the caller works on the current chunk (numpy releases the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    import jax

    n, d = database.shape
    starts = list(range(0, n, rows))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(starts), desc="exact search", unit="chunk")
    buffers: dict[int, np.ndarray] = {}  # two alternating staging buffers, made when first needed

    def stage(k: int) -> np.ndarray:
        """Chunk k as an aligned float32 (rows, D) array: the database's own rows, or a filled buffer."""
        start = starts[k]
        part = database[start : start + rows]
        if (part.shape[0] == rows and part.dtype == np.float32 and part.flags.c_contiguous
                and part.ctypes.data % 64 == 0):
            return part
        if k % 2 not in buffers:
            buffers[k % 2] = aligned_empty((rows, d))
        staging = buffers[k % 2]
        staging[: part.shape[0]] = part
        staging[part.shape[0] :] = 0  # pad the last chunk (static shapes)
        return staging

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="remap-stage") as pool:
        ahead = pool.submit(stage, 0)
        for k, start in enumerate(starts):
            part = ahead.result()
            if k + 1 < len(starts):
                ahead = pool.submit(stage, k + 1)
            yield start, min(rows, n - start), jax.device_put(part)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()


def _query_batches(queries: np.ndarray, query_batch: int):
    """Device batches of at most ``query_batch`` (a power of two) queries; a partial last batch is padded to a
    multiple of 8 rows (few compiled shapes, little wasted work). Returns [(start, count, device array)]."""
    import jax

    nq, d = queries.shape
    qb = _next_pow2(query_batch)
    out = []
    for start in range(0, nq, qb):
        count = min(qb, nq - start)
        padded = np.zeros((-(-count // 8) * 8, d), np.float32)
        padded[:count] = queries[start : start + count]
        out.append((start, count, jax.device_put(padded)))
    return out


def exact_search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    chunk_bytes: int = 64 << 20,
    query_batch: int = 256,
    progress: bool = False,
    return_scores: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Exact inner-product top-k.

    Args:
      database: (N, D) float32 (may be a read-only memmap); streamed in chunks of about ``chunk_bytes``.
      queries: (Q, D) float32.
      k: neighbours per query, 1 <= k <= N; k = N ranks the whole database.
      chunk_bytes: bytes of database per step (rows rounded to a multiple of 128; the last chunk is padded).
      query_batch: most queries per step (a power of two; a partial batch is padded to a multiple of 8).
      progress: tqdm bar over the database chunks.
      return_scores: False returns None for the scores (a deep ranking then skips gathering them).
    Returns:
      positions (Q, k) int64 row indices into ``database`` by decreasing score, scores (Q, k) float32.
      Equal scores are ordered by lower row first.

    Below ``FULL_ORDER_MIN_K`` neighbours, each chunk's scores are merged into a running top-k on the device.
    From there on, the device turns every score into a uint32 order key and each query's keys are sorted
    once on the host (one sort of 64-bit key-and-row composites, so ties stay in row order); this needs 4
    bytes per (query, database row) of host memory besides the results, e.g. 280 MB for 70 queries x 1M rows.
    """
    n, d = database.shape
    rows = max(128, (chunk_bytes // (4 * d)) // 128 * 128)
    rows = min(rows, -(-n // 128) * 128)
    k = int(k)
    if k >= FULL_ORDER_MIN_K:
        return _exact_search_full_order(database, queries, k, rows, query_batch, progress, return_scores)
    import jax

    batches = _query_batches(queries, query_batch)
    step = _exact_step_fn(k)
    best = [
        (jax.numpy.full((q.shape[0], k), -np.inf, np.float32), jax.numpy.full((q.shape[0], k), -1, np.int32))
        for _, _, q in batches
    ]
    for start, n_valid, chunk in _database_chunks(database, rows, progress):
        best = [
            step(bs, bp, q, chunk, np.int32(start), np.int32(n_valid))
            for (bs, bp), (_, _, q) in zip(best, batches, strict=True)
        ]
        jax.block_until_ready(best)  # the chunk's staging buffer is refilled next
    nq = queries.shape[0]
    scores = np.concatenate(
        [np.asarray(bs)[:count] for (bs, _), (_, count, _) in zip(best, batches, strict=True)]
    )
    positions = np.concatenate(
        [np.asarray(bp)[:count] for (_, bp), (_, count, _) in zip(best, batches, strict=True)]
    )
    return positions.reshape(nq, k).astype(np.int64), scores.reshape(nq, k) if return_scores else None


def _exact_search_full_order(database, queries, k, rows, query_batch, progress, return_scores):
    """``exact_search`` for large k: device order keys of every (query, row), then a host sort per query."""
    from concurrent.futures import ThreadPoolExecutor

    n = database.shape[0]
    nq = queries.shape[0]
    keys = np.empty((nq, n), np.uint32)
    positions = np.empty((nq, k), np.int64)
    scores = np.empty((nq, k), np.float32) if return_scores else None
    batches = _query_batches(queries, query_batch)
    key_fn = _order_key_fn()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="remap-touch") as toucher:
        # The first write to fresh memory costs page faults, many times the cost of writing memory used
        # before. Taking them on a thread while the device computes the keys keeps them out of the sorts.
        touched = toucher.submit(positions.fill, 0)
        for start, n_valid, chunk in _database_chunks(database, rows, progress):
            for q0, count, q in batches:
                block = np.asarray(key_fn(q, chunk))
                keys[q0 : q0 + count, start : start + n_valid] = block[:count, :n_valid]
        touched.result()

    rows_u64 = np.arange(n, dtype=np.uint64)

    def order(i: int) -> None:
        # One sort of 64-bit composites (32-bit order key above, row below): sorted by key, equal keys (equal
        # scores) in row order. np.sort of uint64 takes numpy's SIMD sort where the CPU has one, faster than
        # two stable 16-bit radix argsorts and their gather. Built, sorted and cut back to rows in place; for
        # k = N in the query's own row of the result.
        composite = positions[i].view(np.uint64) if k == n else np.empty(n, np.uint64)
        np.left_shift(keys[i], np.uint64(32), out=composite)
        composite |= rows_u64
        composite.sort()
        if scores is not None:
            scores[i] = _scores_of_keys(composite[:k] >> np.uint64(32))
        head = composite[:k]
        head &= np.uint64(0xFFFFFFFF)
        if k < n:
            positions[i] = head

    # numpy releases the GIL while it sorts and gathers, so the rows sort in parallel.
    with ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, nq))) as pool:
        list(pool.map(order, range(nq)))
    return positions, scores
