"""Retrieval index over global descriptors: exact search (JAX) and compressed search (ScaNN).

Similarity is the inner product; REMAP descriptors are unit vectors, so it equals the cosine similarity.

- ``method="exact"``: the float32 database is streamed through a jit-compiled chunked matmul + top-k with a
  running merge, so memory stays bounded (a 1M x 2048 float32 database needs its 8 GB plus about
  ``chunk_bytes`` per step) and the work runs on the default JAX device.
- ``method="scann"``: ScaNN asymmetric hashing with product quantisation: the (truncated) vector is cut into
  ``pq_bytes`` sub-vectors, each coded by one of 256 centroids (one byte), searched with 8-bit lookup tables
  (ScaNN ``hash_type="lut256"``, ``lookup_type: INT8``). Optional k-means tree partitioning (``leaves``),
  anisotropic quantisation (``anisotropic_threshold``) and exact re-scoring of the top candidates
  (``reorder``).
- Either method can keep only the first ``truncate_dim`` dimensions (re-normalised), the paper's other
  compact signature; PCA-whitened descriptors put the most significant dimensions first.

A saved index is a folder with ``index.json`` (format, method, options, sizes), ``ids.npy`` and either
``database.npy`` (exact; memory-mapped on load) or ``scann/`` (ScaNN's own serialisation). ``save`` writes
to a temporary sibling folder and renames it into place at the end, so an interrupted save never leaves a
folder that loads.

    index = Index.build(descriptors, ids=names, method="scann", pq_bytes=64, leaves=1000, reorder=200)
    ids, scores = index.search(queries, k=100)      # (Q, 100) ids of the database, (Q, 100) float32
    index.save("/data/index"); index = Index.load("/data/index")
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from remap_jax import atomic

FORMAT_NAME = "remap-jax-index"
FORMAT_VERSION = 1
METHODS = ("exact", "scann")
REORDER_DTYPES = ("float32", "bfloat16", "int8")

_EXACT_OPTIONS = {"truncate_dim": None, "chunk_bytes": 64 << 20, "query_batch": 256}
_SCANN_OPTIONS = {
    "truncate_dim": None,
    "pq_bytes": None,  # default: one byte per 8 dimensions (dim / 8)
    "leaves": None,  # k-means tree partitions; None = no tree (score every code)
    "leaves_to_search": None,  # default: max(1, leaves // 20)
    "anisotropic_threshold": None,  # ScaNN's anisotropic quantisation threshold (0.2 is ScaNN's usual value)
    "reorder": 0,  # exact re-scoring of this many candidates per query; 0 = return PQ scores
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


def truncate_and_normalize(x: np.ndarray, dim: int | None, eps: float = 1e-12) -> np.ndarray:
    """Keeps the first ``dim`` columns of (N, D) ``x``, L2-normalised; ``dim=None`` returns ``x`` as is."""
    if dim is None:
        return x
    t = np.array(x[:, :dim], dtype=np.float32, copy=True)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), eps)
    return t


def _resolve_options(method: str, options: dict[str, Any], dim: int, n: int) -> dict[str, Any]:
    defaults = _EXACT_OPTIONS if method == "exact" else _SCANN_OPTIONS
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"Index.build: unknown option(s) {unknown} for method={method!r}; "
            f"expected some of {sorted(defaults)}"
        )
    opts = {**defaults, **options}
    td = opts["truncate_dim"]
    if td is not None:
        td = int(td)
        if not 1 <= td <= dim:
            raise ValueError(f"truncate_dim: expected 1 <= truncate_dim <= {dim} (descriptor dim), got {td}")
        opts["truncate_dim"] = td
    eff_dim = td or dim
    if method == "exact":
        opts["chunk_bytes"] = int(opts["chunk_bytes"])
        opts["query_batch"] = int(opts["query_batch"])
        if opts["chunk_bytes"] <= 0 or opts["query_batch"] <= 0:
            raise ValueError("chunk_bytes and query_batch: expected positive integers")
        return opts
    pq = opts["pq_bytes"]
    pq = max(1, eff_dim // 8) if pq is None else int(pq)
    if not 1 <= pq <= eff_dim:
        raise ValueError(f"pq_bytes: expected 1 <= pq_bytes <= {eff_dim} (searched dimension), got {pq}")
    opts["pq_bytes"] = pq
    leaves = opts["leaves"]
    if leaves is not None and int(leaves) > 0:
        leaves = int(leaves)
        if leaves > n:
            raise ValueError(f"leaves: expected at most the database size {n}, got {leaves}")
        lts = opts["leaves_to_search"]
        lts = max(1, leaves // 20) if lts is None else int(lts)
        if not 1 <= lts <= leaves:
            raise ValueError(
                f"leaves_to_search: expected 1 <= leaves_to_search <= leaves={leaves}, got {lts}"
            )
        opts["leaves"], opts["leaves_to_search"] = leaves, lts
    else:
        opts["leaves"], opts["leaves_to_search"] = None, None
    opts["reorder"] = int(opts["reorder"] or 0)
    if opts["reorder"] < 0:
        raise ValueError(f"reorder: expected >= 0 candidates, got {opts['reorder']}")
    if opts["reorder_dtype"] not in REORDER_DTYPES:
        raise ValueError(f"reorder_dtype: expected one of {REORDER_DTYPES}, got {opts['reorder_dtype']!r}")
    if opts["anisotropic_threshold"] is not None:
        opts["anisotropic_threshold"] = float(opts["anisotropic_threshold"])
    for key in ("training_sample_size", "training_iterations", "threads"):
        opts[key] = int(opts[key])
    return opts


# ----------------------------------------------------------------------------------------------------
# exact search (JAX)


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


def exact_search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    chunk_bytes: int = 64 << 20,
    query_batch: int = 256,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k.

    Args:
      database: (N, D) float32 (may be a read-only memmap); streamed in chunks of about ``chunk_bytes``.
      queries: (Q, D) float32.
      k: neighbours per query, 1 <= k <= N.
      chunk_bytes: bytes of database per step (rows rounded to a multiple of 128; the last chunk is padded).
      query_batch: most queries per step (padded to a power of two so few shapes compile).
    Returns:
      positions (Q, k) int64 row indices into ``database`` by decreasing score, scores (Q, k) float32.
      Equal scores are ordered by lower row first.
    """
    import jax

    n, d = database.shape
    nq = queries.shape[0]
    rows = max(128, (chunk_bytes // (4 * d)) // 128 * 128)
    rows = min(rows, -(-n // 128) * 128)
    qb = min(_next_pow2(query_batch), max(8, _next_pow2(nq)))
    step = _exact_step_fn(int(k))
    q_pad = np.zeros((-(-nq // qb) * qb, d), np.float32)
    q_pad[:nq] = queries
    q_batches = [jax.device_put(q_pad[s : s + qb]) for s in range(0, len(q_pad), qb)]
    best = [
        (jax.numpy.full((qb, k), -np.inf, np.float32), jax.numpy.full((qb, k), -1, np.int32))
        for _ in q_batches
    ]
    starts = range(0, n, rows)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="exact search", unit="chunk", total=len(starts))
    buf = np.zeros((rows, d), np.float32)
    for start in starts:
        part = database[start : start + rows]
        if part.shape[0] < rows:  # pad only the last chunk: static shapes, no full copy of the database
            buf[: part.shape[0]] = part
            buf[part.shape[0] :] = 0
            part = buf
        chunk = jax.device_put(np.asarray(part, dtype=np.float32))
        n_valid = min(rows, n - start)
        best = [
            step(bs, bp, qbat, chunk, np.int32(start), np.int32(n_valid))
            for (bs, bp), qbat in zip(best, q_batches, strict=True)
        ]
    scores = np.concatenate([np.asarray(bs) for bs, _ in best])[:nq]
    positions = np.concatenate([np.asarray(bp) for _, bp in best])[:nq].astype(np.int64)
    return positions, scores


# ----------------------------------------------------------------------------------------------------
# ScaNN


def _import_scann():
    # ScaNN imports TensorFlow (seconds); only the scann code path pays for it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import scann  # noqa: F401
        from scann.scann_ops.py import scann_builder, scann_ops_pybind
    except ImportError as e:  # pragma: no cover - scann is a pinned dependency
        raise ImportError(f"method='scann' needs the scann package (pip install scann==1.4.2): {e}") from e
    return scann_ops_pybind, scann_builder


def _build_scann(db: np.ndarray, opts: dict[str, Any]):
    ops, builder_mod = _import_scann()
    n, d = db.shape
    pq = opts["pq_bytes"]
    dims_per_block = math.ceil(d / pq)
    sample = min(n, opts["training_sample_size"])
    b = ops.builder(db, 10, "dot_product")
    if opts["leaves"]:
        b = b.tree(
            num_leaves=opts["leaves"],
            num_leaves_to_search=opts["leaves_to_search"],
            training_sample_size=sample,
            min_partition_size=1,
        )
    aq = opts["anisotropic_threshold"]
    b = b.score_ah(
        dims_per_block,
        anisotropic_quantization_threshold=float("nan") if aq is None else aq,
        training_sample_size=sample,
        training_iterations=opts["training_iterations"],
        hash_type="lut256",  # 256 centroids per sub-vector, one byte each, 8-bit (INT8) lookup tables
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


def _code_bytes(opts: dict[str, Any], d: int) -> int:
    """Bytes of PQ code per vector actually used (number of sub-vectors after rounding the block size)."""
    return math.ceil(d / math.ceil(d / opts["pq_bytes"]))


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
            scann: ``pq_bytes`` (m sub-vectors x 256 centroids = m bytes per vector; default dim/8),
            ``leaves`` (k-means tree partitions, default none), ``leaves_to_search`` (default leaves/20),
            ``anisotropic_threshold`` (default off; 0.2 is ScaNN's usual), ``reorder`` (exactly re-score this
            many PQ candidates, default 0), ``reorder_dtype`` ("float32", "bfloat16", "int8"),
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
        opts = _resolve_options(method, dict(options), dim, n)
        db = truncate_and_normalize(db, opts["truncate_dim"])
        if method == "exact":
            return cls(method, dim, ids, opts, _database=db)
        return cls(method, dim, ids, opts, _searcher=_build_scann(db, opts))

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

        Ids are not counted.
        """
        if self.method == "exact":
            return 4 * self.search_dim
        total = self.code_bytes + (4 if self.options["leaves"] else 0)
        if self.options["reorder"]:
            total += self.search_dim * {"float32": 4, "bfloat16": 2, "int8": 1}[self.options["reorder_dtype"]]
        return total

    # ---- search

    def search(self, queries, k: int, **search_options) -> tuple[np.ndarray, np.ndarray]:
        """Top-k database ids per query by decreasing inner product.

        Args:
          queries: (Q, D) or (D,) finite floats, D = ``self.dim``.
          k: 1 <= k <= number of indexed vectors.
          **search_options: scann only: ``leaves_to_search``, ``reorder`` override the build values.
            exact only: ``progress`` (tqdm bar over database chunks).
        Returns:
          ids (Q, k) (dtype of ``self.ids``) and scores (Q, k) float32; (k,) each for a (D,) query.
          Scores are exact for "exact" and for re-scored scann candidates, PQ estimates otherwise.
        """
        positions, scores = self.search_positions(queries, k, **search_options)
        return self.ids[positions], scores

    def search_positions(self, queries, k: int, **search_options) -> tuple[np.ndarray, np.ndarray]:
        """Like ``search`` but returns int64 row positions (0..N-1, build order) instead of ids."""
        single = np.ndim(queries) == 1
        q = _as_matrix("queries", np.atleast_2d(queries) if single else queries, dim=self.dim)
        k = _check_k(k, len(self))
        q = truncate_and_normalize(q, self.options.get("truncate_dim"))
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
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
        try:
            np.save(os.path.join(tmp, "ids.npy"), self.ids, allow_pickle=False)
            if self.method == "exact":
                np.save(os.path.join(tmp, "database.npy"), self._database, allow_pickle=False)
            else:
                os.makedirs(os.path.join(tmp, "scann"))
                self._searcher.serialize(os.path.join(tmp, "scann"), relative_path=True)
            # index.json last: a folder without it is never taken for an index.
            with open(os.path.join(tmp, "index.json"), "w") as f:
                json.dump(self.metadata(), f, indent=2)
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
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise IndexFormatError(f"index directory {directory}: unreadable index.json ({e})") from e
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
        return cls(method, int(meta["dim"]), ids, opts, _searcher=searcher)


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
