"""Build options of a retrieval index: the methods, ScaNN's defaults for a database size and dimension, and
the checks that turn the options given to ``Index.build`` into the complete, resolved set that index.json
records.

Options not given are chosen by ``default_scann_options`` (scann) or ``EXACT_OPTIONS`` (exact);
``resolve_options`` checks the given ones and fills in the rest.
"""

from __future__ import annotations

import math
from typing import Any

METHODS = ("exact", "scann")
REORDER_DTYPES = ("float32", "bfloat16", "int8")

EXACT_OPTIONS = {"truncate_dim": None, "chunk_bytes": 64 << 20, "query_batch": 256}
SCANN_OPTIONS = (
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
      (higher recall at the same speed than a Euclidean tree). The codes
      encode each vector's offset from its leaf centre (``residual_codes``, ScaNN's fast global top-n
      path), except in a codes-only index on a spherical tree, where unit centres leave offsets too large
      for 4-bit codes and the vectors themselves are coded (the higher recall there);
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


def resolve_options(
    method: str, options: dict[str, Any], dim: int, n: int, unit_norm: bool = True
) -> dict[str, Any]:
    """Every build option of ``method``: the given ones checked, the others at their defaults."""
    known = set(EXACT_OPTIONS) if method == "exact" else set(SCANN_OPTIONS)
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
        opts = {**EXACT_OPTIONS, **options, "truncate_dim": td}
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
    return {key: opts[key] for key in SCANN_OPTIONS}

