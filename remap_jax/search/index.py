"""Retrieval index over global descriptors: exact search (JAX) and compressed search (ScaNN).

Similarity is the inner product; REMAP descriptors are unit vectors, so it equals the cosine similarity.

- ``method="exact"``: the float32 database is streamed through a jit-compiled chunked matmul on the default
  JAX device, with a running top-k merged on the device (a deep k, up to the whole database, is sorted once
  per query on the host instead), so memory stays bounded (a 1M x 2048 float32 database needs its 8 GB
  plus about ``chunk_bytes`` per step).
- ``method="scann"``: ScaNN asymmetric hashing with product quantisation: the (truncated) vector is cut into
  sub-vectors, each coded by one of 16 (``pq_bits=4``, ScaNN ``lut16``) or 256 (``pq_bits=8``, ``lut256``)
  centroids, ``pq_bytes`` bytes per vector, searched with 8-bit lookup tables. Optionally a k-means tree
  (``leaves``, ``leaves_to_search``), anisotropic quantisation (``anisotropic_threshold``) and re-scoring of
  the best candidates with stored float32/bfloat16/int8 vectors (``reorder``, ``reorder_dtype``). Options
  not given are chosen for the database size and dimension by ``default_scann_options``: a tree of about
  sqrt(N) leaves from 20k vectors on, dim/8 bytes of 4-bit codes, anisotropic quantisation and float32
  re-scoring of 100 candidates. ``reorder=0`` keeps the codes only (the compact index).
- Either method can keep only the first ``truncate_dim`` dimensions (re-normalised), the paper's other
  compact signature; PCA-whitened descriptors put the most significant dimensions first.

A saved index is a folder with ``index.json`` (format, method, every resolved option, sizes), ``ids.npy``
and either ``database.npy`` (exact; memory-mapped on load) or ``scann/`` (ScaNN's own serialisation).
``save`` writes to a temporary sibling folder and renames it into place at the end, so an interrupted save
never leaves a folder that loads.

    index = Index.build(descriptors, ids=names, method="scann")   # defaults for N and D, see index.options
    ids, scores = index.search(queries, k=100)      # (Q, 100) ids of the database, (Q, 100) float32
    compact = Index.build(descriptors, method="scann", pq_bytes=64, reorder=0)   # 64-byte codes only
    index.save("/data/index"); index = Index.load("/data/index")
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from remap_jax.runtime import atomic
from remap_jax.runtime.extras import require

FORMAT_NAME = "remap-jax-index"
FORMAT_VERSION = 1
METHODS = ("exact", "scann")
REORDER_DTYPES = ("float32", "bfloat16", "int8")

_EXACT_OPTIONS = {"truncate_dim": None, "chunk_bytes": 64 << 20, "query_batch": 256}
_SCANN_OPTIONS = (
    "truncate_dim",
    "pq_bytes",
    "pq_bits",
    "leaves",
    "leaves_to_search",
    "spherical_tree",
    "residual_codes",
    "anisotropic_threshold",
    "reorder",
    "reorder_dtype",
    "training_sample_size",
    "training_iterations",
    "threads",
)
# From this database size on, the default ScaNN index partitions the database with a k-means tree.
TREE_MIN_VECTORS = 20_000


def tree_leaves(n: int) -> int:
    """About sqrt(N) k-means partitions (ScaNN's guidance), a multiple of 100 from 100k vectors up."""
    root = math.sqrt(n)
    return max(1, int(round(root / 100)) * 100) if n >= 100_000 else max(1, int(round(root)))


def default_scann_options(n: int, dim: int, unit_norm: bool = True) -> dict[str, Any]:
    """The options ``Index.build(x, method="scann")`` uses for a database of ``n`` x ``dim`` (searched dim);
    ``unit_norm``: whether its rows are unit vectors (``Index.build`` checks a sample of rows).

    - 4-bit product quantisation codes of 4 dimensions each (ScaNN's ``lut16`` asymmetric hashing, the fast
      in-register lookup tables): ``dim / 8`` bytes per vector, trained with anisotropic quantisation
      (threshold 0.2, which favours the inner products of near neighbours). With ``pq_bytes`` given,
      ``pq_bits`` stays 4 unless that would cut sub-vectors under one dimension (``2 * pq_bytes > dim``),
      then 8 (256 centroids per sub-vector, ScaNN ``lut256``);
    - from ``TREE_MIN_VECTORS`` vectors on, a k-means tree of about sqrt(n) leaves (``tree_leaves``), 5% of
      them searched per query (``leaves_to_search`` = leaves / 20); below, every code is scored. For unit
      vectors the tree is spherical (``spherical_tree``: unit-length centres), so that putting a vector in
      the leaf of its nearest centre and sending a query to the centres of largest inner product agree
      (at 100k x 512, 6 of 300 leaves searched: recall@10 0.97 instead of 0.90, same speed). The codes
      encode each vector's offset from its leaf centre (``residual_codes``, ScaNN's fast global top-n
      path), except in a codes-only index on a spherical tree, where unit centres leave offsets too large
      for 4-bit codes and the vectors themselves are coded (recall@10 0.77 instead of 0.63 at 3 leaves);
    - the best 100 candidates re-scored exactly with float32 vectors (``reorder``), so the scores returned
      are exact inner products; this keeps the vectors (4 * dim bytes each) in memory.

    Any option given to ``Index.build`` replaces its default; ``reorder=0`` keeps codes only (compact index,
    PQ score estimates), ``leaves=0`` scores every code, ``anisotropic_threshold=None`` trains plain PQ.
    """
    leaves = tree_leaves(n) if n >= TREE_MIN_VECTORS else 0
    return {
        "truncate_dim": None,
        "pq_bytes": max(1, math.ceil(dim / 8)),
        "pq_bits": 4,
        "leaves": leaves,
        "leaves_to_search": None,  # resolved from the leaves: max(1, leaves // 20)
        "spherical_tree": bool(unit_norm),
        "residual_codes": None,  # resolved: not (spherical_tree and reorder == 0)
        "anisotropic_threshold": 0.2,
        "reorder": 100,
        "reorder_dtype": "float32",
        "training_sample_size": 100_000,
        "training_iterations": 10,
        "threads": 0,  # ScaNN training/search threads; 0 = all cores
    }


class IndexFormatError(ValueError):
    """A folder given to ``Index.load`` is not a complete remap-jax index."""


# ----------------------------------------------------------------------------------------------------
# input checks


def _as_matrix(name: str, x, dim: int | None = None) -> np.ndarray:
    """Returns ``x`` as a C-contiguous float32 (N, D) array (no copy when it already is one), after checks."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected rank 2 (N, D), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name}: expected a float array, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: expected dimension {dim} (the index's), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    _check_finite(name, x)
    return x


def _check_finite(name: str, x: np.ndarray, rows_per_step: int = 65536) -> None:
    """Raises ValueError naming the first row with a NaN or infinite entry (scanned in slices)."""
    for start in range(0, x.shape[0], rows_per_step):
        ok = np.isfinite(x[start : start + rows_per_step]).all(axis=1)
        if not ok.all():
            bad = start + int(np.argmin(ok))
            count = int((~ok).sum())
            raise ValueError(
                f"{name}: row {bad} contains NaN or infinite values ({count} such rows in rows "
                f"{start}..{start + len(ok) - 1}); expected finite descriptors"
            )


def _as_ids(ids, n: int) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"ids: expected shape ({n},) (one per descriptor), got shape {ids.shape}")
    if ids.dtype == object:
        ids = ids.astype(str)
    if ids.dtype.kind not in "iuU":
        raise ValueError(f"ids: expected integers or strings, got dtype {ids.dtype}")
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != n:
        dup = uniq[counts > 1]
        raise ValueError(f"ids: expected unique values, got {len(dup)} duplicated, e.g. {dup[0]!r}")
    return ids


def _rows_are_unit(x: np.ndarray, sample: int = 4096, tol: float = 1e-3) -> bool:
    """Whether (up to ``sample`` evenly spaced) rows of ``x`` have unit L2 norm within ``tol``."""
    rows = x[:: max(1, x.shape[0] // sample)]
    return bool(np.all(np.abs(np.linalg.norm(rows, axis=1) - 1.0) <= tol))


def truncate_and_normalize(x: np.ndarray, dim: int | None, eps: float = 1e-12) -> np.ndarray:
    """Keeps the first ``dim`` columns of (N, D) ``x``, L2-normalised; ``dim=None`` returns ``x`` as is."""
    if dim is None:
        return x
    t = np.array(x[:, :dim], dtype=np.float32, copy=True)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), eps)
    return t


def _resolve_options(
    method: str, options: dict[str, Any], dim: int, n: int, unit_norm: bool = True
) -> dict[str, Any]:
    """Every build option of ``method``: the given ones checked, the others at their defaults."""
    known = set(_EXACT_OPTIONS) if method == "exact" else set(_SCANN_OPTIONS)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"Index.build: unknown option(s) {unknown} for method={method!r}; "
            f"expected some of {sorted(known)}"
        )
    td = options.get("truncate_dim")
    if td is not None:
        td = int(td)
        if not 1 <= td <= dim:
            raise ValueError(f"truncate_dim: expected 1 <= truncate_dim <= {dim} (descriptor dim), got {td}")
    eff_dim = td or dim
    if method == "exact":
        opts = {**_EXACT_OPTIONS, **options, "truncate_dim": td}
        opts["chunk_bytes"] = int(opts["chunk_bytes"])
        opts["query_batch"] = int(opts["query_batch"])
        if opts["chunk_bytes"] <= 0 or opts["query_batch"] <= 0:
            raise ValueError("chunk_bytes and query_batch: expected positive integers")
        return opts
    # An option given as None means "none" for leaves, reorder and anisotropic_threshold, "default" else.
    opts = {**default_scann_options(n, eff_dim, unit_norm), **options, "truncate_dim": td}
    opts["spherical_tree"] = bool(opts["spherical_tree"])
    if opts["residual_codes"] is None:
        opts["residual_codes"] = not (opts["spherical_tree"] and not opts["reorder"])
    opts["residual_codes"] = bool(opts["residual_codes"])
    pq = opts["pq_bytes"]
    pq = max(1, math.ceil(eff_dim / 8)) if pq is None else int(pq)
    if options.get("pq_bits") is None:  # 4-bit codes unless that would need sub-vectors under 1 dimension
        opts["pq_bits"] = 4 if 2 * pq <= eff_dim else 8
    opts["pq_bits"] = int(opts["pq_bits"])
    if opts["pq_bits"] not in (4, 8):
        raise ValueError(f"pq_bits: expected 4 or 8 bits per sub-vector code, got {opts['pq_bits']}")
    if not 1 <= pq * 8 // opts["pq_bits"] <= eff_dim:
        raise ValueError(
            f"pq_bytes: {pq} bytes of {opts['pq_bits']}-bit codes are {pq * 8 // opts['pq_bits']} "
            f"sub-vectors; expected 1 .. {eff_dim} (the searched dimension)"
        )
    opts["pq_bytes"] = pq
    leaves = int(opts["leaves"] or 0)
    if leaves < 0 or leaves > n:
        raise ValueError(f"leaves: expected 0 (no tree) .. the database size {n}, got {leaves}")
    lts = None
    if leaves:
        lts = opts["leaves_to_search"]
        lts = max(1, leaves // 20) if lts is None else int(lts)
        if not 1 <= lts <= leaves:
            raise ValueError(
                f"leaves_to_search: expected 1 <= leaves_to_search <= leaves={leaves}, got {lts}"
            )
    opts["leaves"], opts["leaves_to_search"] = leaves, lts
    opts["reorder"] = int(opts["reorder"] or 0)
    if opts["reorder"] < 0:
        raise ValueError(f"reorder: expected >= 0 candidates (0: codes only), got {opts['reorder']}")
    if opts["reorder_dtype"] not in REORDER_DTYPES:
        raise ValueError(f"reorder_dtype: expected one of {REORDER_DTYPES}, got {opts['reorder_dtype']!r}")
    if opts["anisotropic_threshold"] is not None:
        opts["anisotropic_threshold"] = float(opts["anisotropic_threshold"])
    for key in ("training_sample_size", "training_iterations", "threads"):
        opts[key] = int(opts[key])
    return {key: opts[key] for key in _SCANN_OPTIONS}


# ----------------------------------------------------------------------------------------------------
# exact search (JAX)


# From this many neighbours per query on, exact_search computes every score and sorts each query's row once
# on the host (numpy's SIMD sort, tens of ns per element) instead of a running top-k that re-sorts k
# entries per chunk (XLA's CPU top-k slows with k). Both cost about linearly in N; measured at 1M x 512, 70
# queries, 2-core CPU: k=2048 running 7.6 s vs full 9.0 s, k=4096 running 11.8 s vs full 9.3 s.
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


def _aligned_empty(shape: tuple[int, int], align: int = 64) -> np.ndarray:
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
            buffers[k % 2] = _aligned_empty((rows, d))
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
        # The first write to fresh memory costs page faults (measured on this project's VM: 1-1.5 s for the
        # 560 MB of 70 x 1M positions, against 0.1 s for memory used before). Taking them on a thread while
        # the device computes the keys keeps them out of the sorts.
        touched = toucher.submit(positions.fill, 0)
        for start, n_valid, chunk in _database_chunks(database, rows, progress):
            for q0, count, q in batches:
                block = np.asarray(key_fn(q, chunk))
                keys[q0 : q0 + count, start : start + n_valid] = block[:count, :n_valid]
        touched.result()

    rows_u64 = np.arange(n, dtype=np.uint64)

    def order(i: int) -> None:
        # One sort of 64-bit composites (32-bit order key above, row below): sorted by key, equal keys (equal
        # scores) in row order. np.sort of uint64 takes numpy's SIMD sort where the CPU has one; measured at
        # 1M rows: 15.5 ms against 34 ms for two stable 16-bit radix argsorts and their gather. Built, sorted
        # and cut back to rows in place; for k = N in the query's own row of the result.
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


# ----------------------------------------------------------------------------------------------------
# ScaNN


# ScaNN's C++ code logs through its own, statically linked Abseil. Nothing in the process calls
# absl::InitializeLog(), so Abseil writes every message, INFO included, to stderr, and it reads no environment
# variable (TF_CPP_MIN_LOG_LEVEL only reaches TensorFlow's own logging). The one switch is the C++ function
# absl::SetMinLogLevel, exported by ScaNN's extension module: _import_scann calls it once with WARNING.
_ABSL_SET_MIN_LOG_LEVEL = re.compile(rb"_ZN4absl(?:\d+lts_\d+)?14SetMinLogLevelENS\d*_18LogSeverityAtLeastE")
_ABSL_MIN_LOG_LEVEL = re.compile(rb"_ZN4absl(?:\d+lts_\d+)?11MinLogLevelEv")
_ABSL_WARNING = 1  # absl::LogSeverityAtLeast::kWarning


def _absl_function(library_path: str, pattern: re.Pattern):
    """A ctypes handle on the Abseil function whose mangled name (version-dependent) matches ``pattern``
    in the already loaded shared library ``library_path``, or None if it is not exported."""
    import ctypes
    import mmap

    with open(library_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        match = pattern.search(data)
        name = None if match is None else bytes(match.group()).decode()
    if name is None:
        return None
    try:
        library = ctypes.CDLL(library_path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        return getattr(library, name)
    except (OSError, AttributeError):
        return None


def _scann_library_path() -> str | None:
    import sys

    module = sys.modules.get("scann_pybind")  # imported by scann_ops_pybind under this top-level name
    return getattr(module, "__file__", None)


def _quiet_scann_logging() -> None:
    """Drops ScaNN's C++ INFO lines; its warnings and errors still reach stderr (see the note above)."""
    path = _scann_library_path()
    set_level = _absl_function(path, _ABSL_SET_MIN_LOG_LEVEL) if path else None
    if set_level is not None:
        import ctypes

        set_level.argtypes, set_level.restype = [ctypes.c_int], None
        set_level(_ABSL_WARNING)


def _scann_min_log_level() -> int | None:
    """ScaNN's current Abseil minimum log level (0 INFO, 1 WARNING, 2 ERROR), None if not readable."""
    path = _scann_library_path()
    get_level = _absl_function(path, _ABSL_MIN_LOG_LEVEL) if path else None
    if get_level is None:
        return None
    import ctypes

    get_level.restype = ctypes.c_int
    return int(get_level())


@functools.cache
def _import_scann():
    # ScaNN imports TensorFlow (seconds); only the scann code path pays for it. Level 1 hides TensorFlow's
    # INFO lines at import and keeps its warnings and errors; it must be set before TensorFlow loads.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    require("scann", "index", "ScaNN search (method='scann')")
    from scann.scann_ops.py import scann_builder, scann_ops_pybind

    _quiet_scann_logging()
    return scann_ops_pybind, scann_builder


def _build_scann(db: np.ndarray, opts: dict[str, Any]):
    ops, builder_mod = _import_scann()
    n, d = db.shape
    dims_per_block = _dims_per_block(opts, d)
    sample = min(n, opts["training_sample_size"])
    b = ops.builder(db, 10, "dot_product")
    if opts["leaves"]:
        b = b.tree(
            num_leaves=opts["leaves"],
            num_leaves_to_search=opts["leaves_to_search"],
            training_sample_size=sample,
            min_partition_size=1,
            spherical=opts.get("spherical_tree", False),
        )
    aq = opts["anisotropic_threshold"]
    b = b.score_ah(
        dims_per_block,
        anisotropic_quantization_threshold=float("nan") if aq is None else aq,
        training_sample_size=sample,
        training_iterations=opts["training_iterations"],
        # lut256: 256 centroids per sub-vector (one byte), lut16: 16 centroids (4 bits, in-register tables)
        hash_type="lut256" if opts["pq_bits"] == 8 else "lut16",
        residual_quantization=bool(opts["leaves"] and opts.get("residual_codes", True)),
    )
    if opts["reorder"]:
        quantize = {
            "float32": builder_mod.ReorderType.FLOAT32,
            "bfloat16": builder_mod.ReorderType.BFLOAT16,
            "int8": builder_mod.ReorderType.INT8,
        }[opts["reorder_dtype"]]
        b = b.reorder(opts["reorder"], quantize=quantize)
    if opts["threads"]:
        b = b.set_n_training_threads(opts["threads"])
    searcher = b.build()
    if opts["threads"]:
        searcher.set_num_threads(opts["threads"])
    return searcher


def _dims_per_block(opts: dict[str, Any], d: int) -> int:
    """Dimensions per PQ sub-vector: ``pq_bytes`` bytes hold ``pq_bytes * 8 / pq_bits`` sub-vector codes."""
    return math.ceil(d / (opts["pq_bytes"] * 8 // opts.get("pq_bits", 8)))


def _code_bytes(opts: dict[str, Any], d: int) -> int:
    """Bytes of PQ code per vector actually used (number of sub-vectors after rounding the block size)."""
    blocks = math.ceil(d / _dims_per_block(opts, d))
    return math.ceil(blocks * opts.get("pq_bits", 8) / 8)


# ----------------------------------------------------------------------------------------------------
# the index


@dataclass
class Index:
    """A searchable set of descriptors. Build with ``Index.build``, reload with ``Index.load``.

    Attributes:
      method: "exact" or "scann".
      dim: descriptor dimension the index accepts (queries must have it).
      ids: (N,) ids returned by ``search`` (int64 row numbers unless given).
      options: resolved build options (see ``Index.build``).
    """

    method: str
    dim: int
    ids: np.ndarray
    options: dict[str, Any]
    _database: np.ndarray | None = field(default=None, repr=False)  # exact: (N, D') float32
    _searcher: Any = field(default=None, repr=False)  # scann: ScannSearcher
    # scann with re-scoring: (N, D') rows for re-ranking (the build input, or the saved re-scoring vectors)
    _vectors: Any = field(default=None, repr=False)

    # ---- construction

    @classmethod
    def build(cls, descriptors, ids: Sequence | np.ndarray | None = None, method: str = "exact", **options):
        """Builds an index over (N, D) descriptors.

        Args:
          descriptors: (N, D) finite float array; rows are database vectors (unit length for cosine scores).
            An exact index keeps a reference to a float32 C-contiguous input (no 2x memory for big
            databases); do not modify it afterwards.
          ids: optional (N,) unique ints or strings returned by ``search``; default row numbers 0..N-1.
          method: "exact" or "scann".
          **options: both methods: ``truncate_dim`` (keep the first d dims, re-normalised).
            exact: ``chunk_bytes`` (database bytes per step, default 64 MiB), ``query_batch`` (default 256).
            scann (defaults from ``default_scann_options(N, d)``; every resolved value is in
            ``index.options`` and index.json): ``pq_bytes`` (code bytes per vector, default d/8),
            ``pq_bits`` (4 or 8 bits per sub-vector code, default 4), ``leaves`` (k-means tree partitions;
            default about sqrt(N) from 20k vectors, 0 or None: no tree), ``leaves_to_search`` (default
            leaves/20), ``spherical_tree`` (unit-length tree centres; default: whether the rows are unit
            vectors), ``residual_codes`` (code offsets from the leaf centre; default True except codes-only
            on a spherical tree), ``anisotropic_threshold`` (default 0.2; None: plain PQ), ``reorder``
            (re-score this many PQ candidates with stored vectors, default 100; 0 or None: codes only),
            ``reorder_dtype`` ("float32" (default, exact scores), "bfloat16", "int8"),
            ``training_sample_size`` (100000), ``training_iterations`` (10), ``threads`` (0 = all cores).
        """
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        db = _as_matrix("descriptors", descriptors)
        n, dim = db.shape
        if n == 0:
            raise ValueError("descriptors: empty database (0 rows); expected at least one descriptor")
        if dim == 0:
            raise ValueError("descriptors: expected dimension >= 1, got shape (N, 0)")
        ids = _as_ids(ids, n)
        unit = options.get("truncate_dim") is not None or _rows_are_unit(db)  # truncation re-normalises
        opts = _resolve_options(method, dict(options), dim, n, unit_norm=unit)
        db = truncate_and_normalize(db, opts["truncate_dim"])
        if method == "exact":
            return cls(method, dim, ids, opts, _database=db)
        vectors = db if opts["reorder"] else None  # a reference (no copy) for re-ranking
        return cls(method, dim, ids, opts, _searcher=_build_scann(db, opts), _vectors=vectors)

    # ---- properties

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_vectors(self) -> int:
        return len(self)

    @property
    def search_dim(self) -> int:
        """Dimension actually compared (``truncate_dim`` if set, else ``dim``)."""
        return self.options.get("truncate_dim") or self.dim

    @property
    def code_bytes(self) -> int:
        """Bytes per vector of the compact signature: PQ code bytes (scann) or 4 * dim (exact, float32)."""
        if self.method == "exact":
            return 4 * self.search_dim
        return _code_bytes(self.options, self.search_dim)

    @property
    def memory_bytes_per_vector(self) -> int:
        """Search-time memory per vector: codes, plus the tree's 4-byte leaf index, plus re-scoring vectors.

        Ids are not counted. This is the index's own accounting; ScaNN's bookkeeping adds a few tens of
        bytes per vector on top (``benchmarks/index_bench.py`` reports the resident memory measured).
        """
        if self.method == "exact":
            return 4 * self.search_dim
        total = self.code_bytes + (4 if self.options["leaves"] else 0)
        if self.options["reorder"]:
            total += self.search_dim * {"float32": 4, "bfloat16": 2, "int8": 1}[self.options["reorder_dtype"]]
        return total

    # ---- search

    def search(self, queries, k: int, rerank=None, **search_options) -> tuple[np.ndarray, np.ndarray]:
        """Top-k database ids per query by decreasing inner product.

        Args:
          queries: (Q, D) or (D,) finite floats, D = ``self.dim``.
          k: 1 <= k <= number of indexed vectors.
          rerank: a :class:`remap_jax.search.rerank.SuperGlobal`: the top M (searched to depth max(k, M)) are
            re-ranked with the database vectors, then the list is cut to k; the first min(k, M) scores are
            then SuperGlobal's ranking scores, the rest the index's similarities. Exact: the stored
            database. ScaNN: its re-scoring vectors (the float32 rows it was built from; after ``load``, the
            saved float32 / bfloat16 / int8 re-scoring vectors, memory-mapped and decoded per shortlist);
            a codes-only ScaNN index (``reorder=0``) keeps no vectors and refuses (ValueError).
          **search_options: scann only: ``leaves_to_search``, ``reorder`` override the build values.
            exact only: ``progress`` (tqdm bar over database chunks).
        Returns:
          ids (Q, k) (dtype of ``self.ids``) and scores (Q, k) float32; (k,) each for a (D,) query.
          Scores are exact for "exact" and for re-scored scann candidates, PQ estimates otherwise.
        """
        positions, scores = self.search_positions(queries, k, rerank=rerank, **search_options)
        return self.ids[positions], scores

    def rerank_vectors(self):
        """The (N, search_dim) rows re-ranking reads (array-like: ``shape`` and fancy indexing).

        Raises ValueError for a codes-only ScaNN index, which keeps PQ codes but no vectors.
        """
        if self.method == "exact":
            return self._database
        if self._vectors is None:
            raise ValueError(
                "rerank: this ScaNN index keeps PQ codes only (reorder=0), no vectors to refine the "
                "shortlist with; expected an index built with reorder > 0 (re-scoring vectors) or "
                "method='exact'"
            )
        return self._vectors

    def search_positions(
        self, queries, k: int, rerank=None, **search_options
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``search`` but returns int64 row positions (0..N-1, build order) instead of ids."""
        single = np.ndim(queries) == 1
        q = _as_matrix("queries", np.atleast_2d(queries) if single else queries, dim=self.dim)
        k = _check_k(k, len(self))
        q = truncate_and_normalize(q, self.options.get("truncate_dim"))
        if rerank is not None:
            pos, sc = self._search_reranked(q, k, rerank, search_options)
            return (pos[0], sc[0]) if single else (pos, sc)
        if q.shape[0] == 0:
            pos, sc = np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        elif self.method == "exact":
            allowed = {"progress"}
            _check_search_options(search_options, allowed, self.method)
            pos, sc = exact_search(
                self._database,
                q,
                k,
                chunk_bytes=self.options["chunk_bytes"],
                query_batch=self.options["query_batch"],
                **search_options,
            )
        else:
            _check_search_options(search_options, {"leaves_to_search", "reorder"}, self.method)
            pos, sc = self._scann_search(q, k, **search_options)
        return (pos[0], sc[0]) if single else (pos, sc)

    def _search_reranked(self, q: np.ndarray, k: int, rerank, search_options: dict):
        from remap_jax.search.rerank import check_options, superglobal_rerank

        rerank = check_options(rerank)
        vectors = self.rerank_vectors()
        if rerank.m > len(self):
            raise ValueError(f"rerank m: expected m <= {len(self)} (the database size), got m={rerank.m}")
        pos, sc = self.search_positions(q, max(k, rerank.m), **search_options)
        top, top_scores = superglobal_rerank(q, vectors, pos, rerank)
        pos[:, : rerank.m], sc[:, : rerank.m] = top, top_scores
        return pos[:, :k], sc[:, :k]

    def _scann_search(self, q: np.ndarray, k: int, leaves_to_search=None, reorder=None):
        leaves = self.options["leaves"]
        lts = self.options["leaves_to_search"] if leaves_to_search is None else int(leaves_to_search)
        if leaves and not 1 <= lts <= leaves:
            raise ValueError(
                f"leaves_to_search: expected 1 <= leaves_to_search <= leaves={leaves}, got {lts}"
            )
        ro = self.options["reorder"] if reorder is None else int(reorder)
        if ro and not self.options["reorder"]:
            raise ValueError("reorder: this index was built without re-scoring vectors (reorder=0)")
        pre = max(ro, k) if ro else k
        pos, sc = self._scann_query(q, k, pre, lts if leaves else None)
        # A few searched leaves can hold fewer than k vectors; ScaNN then pads with NaN. Search those
        # queries again over every leaf so that k results always come back.
        short = np.isnan(sc).any(axis=1)
        if short.any() and leaves:
            pos[short], sc[short] = self._scann_query(q[short], k, pre, leaves)
        return pos, sc

    def _scann_query(self, q, k, pre, leaves_to_search):
        idx, dist = self._searcher.search_batched_parallel(
            q, final_num_neighbors=k, pre_reorder_num_neighbors=pre, leaves_to_search=leaves_to_search
        )
        return np.asarray(idx, dtype=np.int64), np.asarray(dist, dtype=np.float32)

    # ---- persistence

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "method": self.method,
            "dim": self.dim,
            "search_dim": self.search_dim,
            "num_vectors": len(self),
            "code_bytes": self.code_bytes,
            "memory_bytes_per_vector": self.memory_bytes_per_vector,
            "options": self.options,
        }

    def save(self, directory: str | os.PathLike) -> str:
        """Writes the index to ``directory`` atomically; returns the path.

        The files are written to a temporary sibling folder that is renamed to ``directory`` at the end. An
        existing index at ``directory`` is replaced; an existing non-empty folder that is not an index is an
        error (nothing of it is deleted).
        """
        directory = os.path.abspath(os.fspath(directory))
        parent = os.path.dirname(directory)
        os.makedirs(parent, exist_ok=True)
        if os.path.exists(directory):
            if not os.path.isdir(directory):
                raise FileExistsError(f"index directory {directory}: exists and is not a folder")
            if os.listdir(directory) and not os.path.isfile(os.path.join(directory, "index.json")):
                raise FileExistsError(
                    f"index directory {directory}: exists, is not empty and is not a remap-jax index; "
                    "expected a new path, an empty folder or an index to replace"
                )
        tmp = atomic.make_temp_dir(directory)  # permissions as the umask says (mkdtemp's are private)
        try:
            np.save(os.path.join(tmp, "ids.npy"), self.ids, allow_pickle=False)
            if self.method == "exact":
                np.save(os.path.join(tmp, "database.npy"), self._database, allow_pickle=False)
            else:
                os.makedirs(os.path.join(tmp, "scann"))
                self._searcher.serialize(os.path.join(tmp, "scann"), relative_path=True)
            # index.json last: a folder without it is never taken for an index.
            atomic.write_json(os.path.join(tmp, "index.json"), self.metadata(), indent=2)
            atomic.replace_dir(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> Index:
        """Loads an index written by ``save``; ``mmap`` memory-maps an exact database (no full read)."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise IndexFormatError(f"index directory {directory}: not found or not a folder")
        meta_path = os.path.join(directory, "index.json")
        if not os.path.isfile(meta_path):
            raise IndexFormatError(
                f"index directory {directory}: not a remap-jax index (no index.json); expected a folder "
                "written by Index.save or `remap-index build`"
            )
        meta = atomic.read_json(meta_path, IndexFormatError, f"index directory {directory}: index.json")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise IndexFormatError(f"index directory {directory}: index.json is not a {FORMAT_NAME} file")
        if meta.get("version") != FORMAT_VERSION or meta.get("method") not in METHODS:
            raise IndexFormatError(
                f"index directory {directory}: unsupported version {meta.get('version')!r} or method "
                f"{meta.get('method')!r}; expected version {FORMAT_VERSION} and one of {METHODS}"
            )
        method, n = meta["method"], int(meta["num_vectors"])
        needed = [
            "ids.npy",
            "database.npy" if method == "exact" else os.path.join("scann", "scann_assets.pbtxt"),
        ]
        missing = [p for p in needed if not os.path.exists(os.path.join(directory, p))]
        if missing:
            raise IndexFormatError(f"index directory {directory}: incomplete index, missing {missing}")
        ids = np.load(os.path.join(directory, "ids.npy"), allow_pickle=False)
        if ids.shape != (n,):
            raise IndexFormatError(
                f"index directory {directory}: ids.npy has shape {ids.shape}, expected ({n},)"
            )
        opts = meta["options"]
        if method == "exact":
            db = np.load(os.path.join(directory, "database.npy"), mmap_mode="r" if mmap else None)
            if db.shape != (n, meta["search_dim"]) or db.dtype != np.float32:
                raise IndexFormatError(
                    f"index directory {directory}: database.npy is {db.dtype}{db.shape}, expected "
                    f"float32({n}, {meta['search_dim']})"
                )
            return cls(method, int(meta["dim"]), ids, opts, _database=db)
        ops, _ = _import_scann()
        searcher = ops.load_searcher(os.path.join(directory, "scann"))
        if opts.get("threads"):
            searcher.set_num_threads(opts["threads"])
        if searcher.size() != n:
            raise IndexFormatError(
                f"index directory {directory}: ScaNN searcher holds {searcher.size()} vectors, expected {n}"
            )
        vectors = None
        if opts["reorder"]:
            vectors = _saved_rescoring_vectors(os.path.join(directory, "scann"), opts)
        return cls(method, int(meta["dim"]), ids, opts, _searcher=searcher, _vectors=vectors)


class _DecodedRows:
    """(N, D) float32 view of ScaNN's saved bfloat16 / int8 re-scoring vectors, decoded per gather."""

    def __init__(self, stored: np.ndarray, dtype: str, inverse_scale: np.ndarray | None = None):
        self._stored, self._dtype, self._inverse_scale = stored, dtype, inverse_scale
        self.shape = stored.shape

    def __getitem__(self, index) -> np.ndarray:
        rows = np.asarray(self._stored[index])
        if self._dtype == "bfloat16":  # the upper 16 bits of a float32
            return (rows.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
        return rows.astype(np.float32) * self._inverse_scale  # int8: value = code / multiplier


def _saved_rescoring_vectors(scann_dir: str, opts: dict[str, Any]):
    """ScaNN's serialised re-scoring vectors (rows in build order), memory-mapped, as float32 rows."""
    dtype = opts["reorder_dtype"]
    name = {"float32": "dataset.npy", "bfloat16": "bfloat16_dataset.npy", "int8": "int8_dataset.npy"}[dtype]
    path = os.path.join(scann_dir, name)
    if not os.path.isfile(path):
        raise IndexFormatError(f"index directory {os.path.dirname(scann_dir)}: missing scann/{name}, the "
                               f"{dtype} re-scoring vectors that reorder={opts['reorder']} needs")
    stored = np.load(path, mmap_mode="r")
    if dtype == "float32":
        return stored
    if dtype == "bfloat16":
        return _DecodedRows(stored, dtype)
    multipliers = np.load(os.path.join(scann_dir, "int8_multipliers.npy")).astype(np.float64)
    safe = np.where(multipliers != 0, multipliers, 1.0)
    return _DecodedRows(stored, dtype, np.where(multipliers != 0, 1.0 / safe, 0.0).astype(np.float32))


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k: expected an integer, got {k!r}")
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 <= k <= {n} (the number of indexed vectors), got {k}")
    return k


def _check_search_options(given: dict, allowed: set, method: str) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(
            f"search: unknown option(s) {unknown} for method={method!r}; expected some of {sorted(allowed)}"
        )
