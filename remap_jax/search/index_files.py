"""The folder an ``Index`` is saved to, and reading it back.

A saved index is a folder with ``index.json`` (format name and version, method, every resolved option,
sizes), ``ids.npy`` (N,) and either ``database.npy`` (exact: float32 (N, D'), memory-mapped on load) or
``scann/`` (ScaNN's own serialisation, with its float32 / bfloat16 / int8 re-scoring vectors when the index
re-scores). ``write_index`` writes to a temporary sibling folder and renames it into place at the end, so an
interrupted save never leaves a folder that loads; ``read_index`` checks every file against index.json and
raises ``IndexFormatError`` naming what is wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from remap_jax.runtime import atomic
from remap_jax.search.index_options import METHODS
from remap_jax.search.scann_backend import load_scann, save_scann

FORMAT_NAME = "remap-jax-index"
FORMAT_VERSION = 1


class IndexFormatError(ValueError):
    """A folder given to ``Index.load`` is not a complete remap-jax index."""


@dataclass
class StoredIndex:
    """What ``read_index`` found: index.json's contents, the ids, and the exact database or ScaNN searcher
    (with its re-scoring vectors as (N, D') float32 rows, or None for a codes-only index)."""

    metadata: dict[str, Any]
    ids: np.ndarray
    database: np.ndarray | None = None
    searcher: Any = None
    vectors: Any = None


def write_index(directory: str | os.PathLike, metadata: dict[str, Any], ids: np.ndarray,
                database: np.ndarray | None = None, searcher: Any = None) -> str:
    """Writes an index folder atomically (``database`` for exact, ``searcher`` for scann); returns its path.

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
    with atomic.writing_dir(directory) as tmp:  # removed on any error; an OSError names `directory`
        np.save(os.path.join(tmp, "ids.npy"), ids, allow_pickle=False)
        if database is not None:
            np.save(os.path.join(tmp, "database.npy"), database, allow_pickle=False)
        else:
            os.makedirs(os.path.join(tmp, "scann"))
            save_scann(searcher, os.path.join(tmp, "scann"))
        # index.json last: a folder without it is never taken for an index.
        atomic.write_json(os.path.join(tmp, "index.json"), metadata, indent=2)
    return directory


def read_index(directory: str | os.PathLike, mmap: bool = True) -> StoredIndex:
    """Reads a folder written by ``write_index``; ``mmap`` memory-maps an exact database (no full read)."""
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
        return StoredIndex(meta, ids, database=db)
    searcher = load_scann(os.path.join(directory, "scann"), opts.get("threads") or 0)
    if searcher.size() != n:
        raise IndexFormatError(
            f"index directory {directory}: ScaNN searcher holds {searcher.size()} vectors, expected {n}"
        )
    vectors = None
    if opts["reorder"]:
        vectors = _saved_rescoring_vectors(os.path.join(directory, "scann"), opts)
    return StoredIndex(meta, ids, searcher=searcher, vectors=vectors)


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

