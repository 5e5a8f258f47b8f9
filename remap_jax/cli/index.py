"""`remap-index`: build, search and describe retrieval indexes from descriptor files.

Descriptor files are the ``.npz`` files ``remap-extract`` writes: ``descriptors`` (N, D) float32, ``ids`` (N,)
str, ``failed`` (M,) str (images that could not be described; ignored here). ``--features`` and ``--queries``
take one or several files or glob patterns, merged in the order given, each pattern's matches sorted by path
(see ``remap_jax.describe.descriptor_files.load_features``).

    remap-index build --features db.npz --out idx/                       # exact (float32 matmul)
    remap-index build --features db.npz --out idx/ --method scann        # ScaNN, options chosen for N and D
    remap-index build --features 'parts/*.npz' extra.npz --out idx/ --pq-bytes 64 --reorder 0   # codes only
    remap-index search --index idx/ --queries q.npz --k 100 --out ranks.npz
    remap-index search --index idx/ --queries q.npz --k 100 --rerank m=200 --out ranks.npz   # SuperGlobal
    remap-index info --index idx/

``ranks.npz`` holds ``ids`` (Q, k) database ids, ``positions`` (Q, k) int64 row numbers in the merged
database, ``scores`` (Q, k) float32 similarities, best first, and ``query_ids`` (Q,). With ``--rerank``
(`remap_jax.search.rerank.SuperGlobal`; a codes-only ScaNN index refuses it) the top M are re-ranked, their
scores
are SuperGlobal's, and ``rerank`` holds the settings as JSON text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from remap_jax.describe.descriptor_files import feature_files, load_features
from remap_jax.runtime import atomic
from remap_jax.runtime.command_errors import reports_os_errors
from remap_jax.runtime.extras import MissingExtraError


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _build(args) -> None:
    from remap_jax.search.index import Index

    files = feature_files(args.features)
    desc, ids = load_features(files)
    scann_flags = {
        "pq_bytes": args.pq_bytes,
        "pq_bits": args.pq_bits,
        "leaves": args.leaves,
        "leaves_to_search": args.leaves_to_search,
        "reorder": args.reorder,
        "reorder_dtype": args.reorder_dtype,
        "anisotropic_threshold": args.anisotropic,
        "threads": args.threads,
    }
    given = {k: v for k, v in scann_flags.items() if v is not None}
    method = args.method or ("scann" if given else "exact")
    if method == "exact" and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise CommandError(f"--method exact: {flags} only apply to --method scann")
    options = dict(given)
    if args.truncate_dim is not None:
        options["truncate_dim"] = args.truncate_dim
    source = files[0] if len(files) == 1 else f"{len(files)} files ({files[0]} ... {files[-1]})"
    print(f"building {method} index over {desc.shape[0]} x {desc.shape[1]} descriptors from {source}")
    t0 = time.perf_counter()
    index = Index.build(desc, ids=ids, method=method, **options)
    build_s = time.perf_counter() - t0
    index.save(args.out)
    if method == "scann":
        chosen = {k: v for k, v in index.options.items() if v is not None}
        print("options: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    print(
        f"built in {build_s:.1f} s ({len(index) / max(build_s, 1e-9):.0f} vectors/s); "
        f"{index.code_bytes} code bytes, {index.memory_bytes_per_vector} bytes/vector in memory; "
        f"saved to {args.out}"
    )


def _search(args) -> None:
    from remap_jax.search.index import Index

    index = Index.load(args.index)
    queries, query_ids = load_features(args.queries)
    options = {}
    if args.leaves_to_search is not None:
        options["leaves_to_search"] = args.leaves_to_search
    if args.reorder is not None:
        options["reorder"] = args.reorder
    if index.method == "exact":
        options["progress"] = True
    rerank, extra = None, {}
    if args.rerank is not None:
        from remap_jax.search.rerank import SuperGlobal

        rerank = SuperGlobal.parse(args.rerank)
        extra["rerank"] = json.dumps(rerank.to_dict())
    t0 = time.perf_counter()
    positions, scores = index.search_positions(queries, args.k, rerank=rerank, **options)
    search_s = time.perf_counter() - t0
    atomic.save_npz(
        args.out, ids=index.ids[positions], positions=positions, scores=scores, query_ids=query_ids, **extra
    )
    reranked = "" if rerank is None else f", SuperGlobal M={rerank.m} K={rerank.k} beta={rerank.beta:g}"
    print(
        f"searched {queries.shape[0]} queries (k={args.k}{reranked}) in {search_s:.2f} s "
        f"({queries.shape[0] / max(search_s, 1e-9):.1f} queries/s); wrote {args.out}"
    )


def _info(args) -> None:
    from remap_jax.search.index import Index
    from remap_jax.search.index_files import IndexFormatError

    path = os.path.join(args.index, "index.json")
    Index.load(args.index)  # validates the folder completely
    try:
        with open(path) as f:
            print(json.dumps(json.load(f), indent=2))
    except OSError as e:  # pragma: no cover - load() above already read it
        raise IndexFormatError(str(e)) from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="remap-index", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build an index from descriptor .npz files and save it to a folder")
    b.add_argument(
        "--features",
        required=True,
        nargs="+",
        action="extend",
        help=".npz files from remap-extract (descriptors, ids) or glob patterns, merged in the order given",
    )
    b.add_argument("--out", required=True, help="index folder to write (replaced atomically if an index)")
    b.add_argument(
        "--method",
        choices=("exact", "scann"),
        help="default: scann when any ScaNN flag is given, else exact. ScaNN options not given are chosen "
        "for N and D (remap_jax.search.index_options.default_scann_options; `remap-index info` shows them)",
    )
    b.add_argument("--pq-bytes", type=int, help="PQ code bytes per vector (default D/8)")
    b.add_argument(
        "--pq-bits", type=int, choices=(4, 8), help="bits per sub-vector code: 4 (16 centroids, default) or 8"
    )
    b.add_argument(
        "--leaves", type=int, help="k-means tree partitions (default about sqrt(N) from 20k vectors; 0: none)"
    )
    b.add_argument("--leaves-to-search", type=int, help="partitions searched per query (default leaves/20)")
    b.add_argument(
        "--reorder",
        type=int,
        help="re-score this many PQ candidates with stored vectors (default 100; 0: codes only, compact)",
    )
    b.add_argument(
        "--reorder-dtype",
        choices=("float32", "bfloat16", "int8"),
        help="stored re-scoring vectors (default float32: exact scores)",
    )
    b.add_argument("--anisotropic", type=float, help="anisotropic quantisation threshold (default 0.2)")
    b.add_argument("--truncate-dim", type=int, help="keep the first d dimensions, re-normalised")
    b.add_argument("--threads", type=int, help="ScaNN threads (default all cores)")
    b.set_defaults(func=_build)

    s = sub.add_parser("search", help="search an index with query descriptors, write ranks .npz")
    s.add_argument("--index", required=True, help="index folder from `remap-index build`")
    s.add_argument(
        "--queries",
        required=True,
        nargs="+",
        action="extend",
        help=".npz files from remap-extract (descriptors, ids) or glob patterns, merged in the order given",
    )
    s.add_argument("--k", type=int, default=100, help="neighbours per query (default 100)")
    s.add_argument("--out", required=True, help="output .npz: ids, positions, scores, query_ids")
    s.add_argument("--leaves-to-search", type=int, help="scann: override the partitions searched")
    s.add_argument("--reorder", type=int, help="scann: override the number of re-scored candidates")
    s.add_argument(
        "--rerank",
        nargs="?",
        const="default",
        metavar="m=M,k=K,beta=B",
        help="SuperGlobal re-ranking of the top M (alone: the defaults m=100,k=5,beta=1; or any of "
        "m=INT,k=INT,beta=FLOAT); needs an exact index or ScaNN with re-scoring vectors",
    )
    s.set_defaults(func=_search)

    i = sub.add_parser("info", help="print an index's metadata")
    i.add_argument("--index", required=True)
    i.set_defaults(func=_info)
    return p


def run(argv: list[str]) -> None:
    """The command without its error handling: errors propagate (`remap-serve --demo` builds its index so)."""
    args = build_parser().parse_args(argv)
    args.func(args)


@reports_os_errors("remap-index")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CommandError, ValueError, FileExistsError, MissingExtraError) as e:
        if isinstance(e, OSError) and e.strerror is not None:
            raise  # the operating system's, not Index.save's own message: one line with what was kept
        print(f"remap-index {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
