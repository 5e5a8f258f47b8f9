"""The ScaNN searcher behind ``Index(method="scann")``: building, searching, saving and loading it.

ScaNN asymmetric hashing with product quantisation: the (truncated) vector is cut into sub-vectors, each
coded by one of 16 (``pq_bits=4``, ScaNN ``lut16``) or 256 (``pq_bits=8``, ``lut256``) centroids,
``pq_bytes`` bytes per vector, searched with 8-bit lookup tables. Optionally a k-means tree (``leaves``,
``leaves_to_search``), anisotropic quantisation (``anisotropic_threshold``) and re-scoring of the best
candidates with stored float32/bfloat16/int8 vectors (``reorder``, ``reorder_dtype``). The options arrive
resolved (``remap_jax.search.index_options.resolve_options``). ScaNN (and TensorFlow) are imported on first
use only.
"""

from __future__ import annotations

import functools
import math
import os
import re
from typing import Any

import numpy as np

from remap_jax.runtime.extras import require

# ScaNN's C++ code logs through its own, statically linked Abseil. Nothing in the process calls
# absl::InitializeLog(), so Abseil writes every message, INFO included, to stderr, and it reads no environment
# variable (TF_CPP_MIN_LOG_LEVEL only reaches TensorFlow's own logging). The one switch is the C++ function
# absl::SetMinLogLevel, exported by ScaNN's extension module: import_scann calls it once with WARNING.
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


def scann_min_log_level() -> int | None:
    """ScaNN's current Abseil minimum log level (0 INFO, 1 WARNING, 2 ERROR), None if not readable."""
    path = _scann_library_path()
    get_level = _absl_function(path, _ABSL_MIN_LOG_LEVEL) if path else None
    if get_level is None:
        return None
    import ctypes

    get_level.restype = ctypes.c_int
    return int(get_level())


@functools.cache
def import_scann():
    """ScaNN's ``(scann_ops_pybind, scann_builder)`` modules, imported once, with its C++ INFO lines off."""
    # ScaNN imports TensorFlow (seconds); only the scann code path pays for it. Level 1 hides TensorFlow's
    # INFO lines at import and keeps its warnings and errors; it must be set before TensorFlow loads.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    require("scann", "index", "ScaNN search (method='scann')")
    from scann.scann_ops.py import scann_builder, scann_ops_pybind

    _quiet_scann_logging()
    return scann_ops_pybind, scann_builder


def build_scann(db: np.ndarray, opts: dict[str, Any]):
    ops, builder_mod = import_scann()
    n, d = db.shape
    block = dims_per_block(opts, d)
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
        block,
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


def dims_per_block(opts: dict[str, Any], d: int) -> int:
    """Dimensions per PQ sub-vector: ``pq_bytes`` bytes hold ``pq_bytes * 8 / pq_bits`` sub-vector codes."""
    return math.ceil(d / (opts["pq_bytes"] * 8 // opts.get("pq_bits", 8)))


def code_bytes(opts: dict[str, Any], d: int) -> int:
    """Bytes of PQ code per vector actually used (number of sub-vectors after rounding the block size)."""
    blocks = math.ceil(d / dims_per_block(opts, d))
    return math.ceil(blocks * opts.get("pq_bits", 8) / 8)


def search_scann(
    searcher, options: dict[str, Any], q: np.ndarray, k: int, leaves_to_search=None, reorder=None
):
    """Top-k positions (Q, k) int64 and scores (Q, k) float32 of float32 queries ``q`` (Q, D').

    ``leaves_to_search`` and ``reorder`` override the build values in ``options`` for this search.
    """
    leaves = options["leaves"]
    lts = options["leaves_to_search"] if leaves_to_search is None else int(leaves_to_search)
    if leaves and not 1 <= lts <= leaves:
        raise ValueError(
            f"leaves_to_search: expected 1 <= leaves_to_search <= leaves={leaves}, got {lts}"
        )
    ro = options["reorder"] if reorder is None else int(reorder)
    if ro and not options["reorder"]:
        raise ValueError("reorder: this index was built without re-scoring vectors (reorder=0)")
    pre = max(ro, k) if ro else k
    pos, sc = _scann_query(searcher, q, k, pre, lts if leaves else None)
    # A few searched leaves can hold fewer than k vectors; ScaNN then pads with NaN. Search those
    # queries again over every leaf so that k results always come back.
    short = np.isnan(sc).any(axis=1)
    if short.any() and leaves:
        pos[short], sc[short] = _scann_query(searcher, q[short], k, pre, leaves)
    return pos, sc


def _scann_query(searcher, q, k, pre, leaves_to_search):
    idx, dist = searcher.search_batched_parallel(
        q, final_num_neighbors=k, pre_reorder_num_neighbors=pre, leaves_to_search=leaves_to_search
    )
    return np.asarray(idx, dtype=np.int64), np.asarray(dist, dtype=np.float32)


def save_scann(searcher, directory: str) -> None:
    """Serialises ``searcher`` into the existing folder ``directory`` (ScaNN's own files, relative paths)."""
    searcher.serialize(directory, relative_path=True)


def load_scann(directory: str, threads: int = 0):
    """The searcher ``save_scann`` wrote to ``directory``; ``threads`` > 0 sets its search threads."""
    ops, _ = import_scann()
    searcher = ops.load_searcher(directory)
    if threads:
        searcher.set_num_threads(threads)
    return searcher
