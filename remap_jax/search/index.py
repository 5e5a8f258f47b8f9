"""Retrieval index over global descriptors: exact search (JAX) and compressed search (ScaNN), the public
``remap_jax.Index``.

Similarity is the inner product; REMAP descriptors are unit vectors, so it equals the cosine similarity.

- ``method="exact"``: the float32 database is streamed through a chunked matmul on the default JAX device
  (``remap_jax.search.exact``), memory bounded by ``chunk_bytes`` per step.
- ``method="scann"``: ScaNN asymmetric hashing with product quantisation (``remap_jax.search.scann_backend``):
  ``pq_bytes`` bytes of 4-bit (or 8-bit) codes per vector, optionally a k-means tree, anisotropic
  quantisation and re-scoring of the best candidates with stored vectors. Options not given are chosen for
  the database size and dimension by ``remap_jax.search.index_options.default_scann_options``: a tree of
  about sqrt(N) leaves from 20k vectors on, dim/8 bytes of 4-bit codes, anisotropic quantisation and
  float32 re-scoring of 100 candidates. ``reorder=0`` keeps the codes only (the compact index).
- Either method can keep only the first ``truncate_dim`` dimensions (re-normalised), the paper's other
  compact signature; PCA-whitened descriptors put the most significant dimensions first.

``save`` / ``load`` go through the folder format of ``remap_jax.search.index_files`` (index.json, ids.npy,
database.npy or scann/), written atomically.

    index = Index.build(descriptors, ids=names, method="scann")   # defaults for N and D, see index.options
    ids, scores = index.search(queries, k=100)      # (Q, 100) ids of the database, (Q, 100) float32
    compact = Index.build(descriptors, method="scann", pq_bytes=64, reorder=0)   # 64-byte codes only
    index.save("/data/index"); index = Index.load("/data/index")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from remap_jax.search import index_files, scann_backend
from remap_jax.search.exact import exact_search
from remap_jax.search.index_options import METHODS, resolve_options
from remap_jax.search.inputs import as_matrix


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
            scann (defaults from ``index_options.default_scann_options(N, d)``; every resolved value is in
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
        db = as_matrix("descriptors", descriptors)
        n, dim = db.shape
        if n == 0:
            raise ValueError("descriptors: empty database (0 rows); expected at least one descriptor")
        if dim == 0:
            raise ValueError("descriptors: expected dimension >= 1, got shape (N, 0)")
        ids = _as_ids(ids, n)
        unit = options.get("truncate_dim") is not None or _rows_are_unit(db)  # truncation re-normalises
        opts = resolve_options(method, dict(options), dim, n, unit_norm=unit)
        db = truncate_and_normalize(db, opts["truncate_dim"])
        if method == "exact":
            return cls(method, dim, ids, opts, _database=db)
        vectors = db if opts["reorder"] else None  # a reference (no copy) for re-ranking
        return cls(method, dim, ids, opts, _searcher=scann_backend.build_scann(db, opts), _vectors=vectors)

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
        return scann_backend.code_bytes(self.options, self.search_dim)

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
        q = as_matrix("queries", np.atleast_2d(queries) if single else queries, dim=self.dim)
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
            pos, sc = scann_backend.search_scann(self._searcher, self.options, q, k, **search_options)
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

    # ---- persistence

    def metadata(self) -> dict[str, Any]:
        return {
            "format": index_files.FORMAT_NAME,
            "version": index_files.FORMAT_VERSION,
            "method": self.method,
            "dim": self.dim,
            "search_dim": self.search_dim,
            "num_vectors": len(self),
            "code_bytes": self.code_bytes,
            "memory_bytes_per_vector": self.memory_bytes_per_vector,
            "options": self.options,
        }

    def save(self, directory: str | os.PathLike) -> str:
        """Writes the index to ``directory`` atomically (``remap_jax.search.index_files``); returns the path.

        An existing index at ``directory`` is replaced; an existing non-empty folder that is not an index is
        an error (nothing of it is deleted).
        """
        return index_files.write_index(directory, self.metadata(), self.ids, database=self._database,
                                       searcher=None if self.method == "exact" else self._searcher)

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> Index:
        """Loads an index written by ``save``; ``mmap`` memory-maps an exact database (no full read).

        Raises ``remap_jax.search.index_files.IndexFormatError`` for a folder that is not a complete index.
        """
        stored = index_files.read_index(directory, mmap=mmap)
        meta = stored.metadata
        return cls(meta["method"], int(meta["dim"]), stored.ids, meta["options"], _database=stored.database,
                   _searcher=stored.searcher, _vectors=stored.vectors)


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
