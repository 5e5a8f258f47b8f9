"""Index benchmark: exact JAX search vs ScaNN (default and compact configurations) vs faiss IVF-PQ.

For each database (synthetic clustered vectors, or real descriptors with --real) it measures, side by side in
one run: build time, bytes per vector (the codes, leaf index and re-scoring vectors the index keeps, and the
resident memory the index takes once saved and loaded again, ids excluded), queries/s (all queries searched
at k=100, one batch, best of 3; exact search best of 2), recall@1, @10, @100 against exact search, and the
speed-up over exact search.

recall@k = |approximate top-k  intersect  exact top-k| / k, averaged over queries (so recall@1 is the fraction
of queries whose exact nearest neighbour comes first).

Rows (``--rows``, comma separated; m = each of ``--pq-bytes``):

- ``default``: ``Index.build(db, method="scann")`` with no options (``default_scann_options``), at its own
  search settings and at the ``--leaves-to-search`` sweep.
- ``pq``: ``scann PQm``, m bytes of codes alone, every code scored (no tree, no re-scoring).
- ``tree``: ``scann tree+PQm``: k-means tree (about sqrt(N) leaves) + m-byte codes, no vectors kept.
- ``tree-int8``: ``scann tree+PQm+int8``: + re-scoring with int8 vectors (D bytes per vector).
- ``tree-f32``: ``scann tree+PQm+f32``: + re-scoring with float32 vectors (4 D bytes per vector).

With ``--faiss`` (faiss-cpu importable; not a dependency), at each of ``--faiss-pq-bytes``: IVF-PQ with m
8-bit codes and IVF-PQ fast-scan with 2m 4-bit codes (the counterpart of ScaNN's 4-bit lut16 codes), each
alone and with re-ranking of the candidates by int8 (``IndexRefine`` + SQ8, D bytes) and float32 (4 D bytes)
vectors; the same number of lists (``tree_leaves``) and lists probed as ScaNN's leaves.

    python benchmarks/index_bench.py --quick            # a few minutes: 20k x 256, PQ 16 and 64
    python benchmarks/index_bench.py                    # 100k and 1M, D=512 and 2048 (1M x 2048 needs --big)
    python benchmarks/index_bench.py --sizes 1000000 --dims 512 --pq-bytes 64 --rows default,tree,tree-int8
    python benchmarks/index_bench.py --sizes 1000000 --dims 2048 --big   # 8 GB database: once, carefully
    python benchmarks/index_bench.py --real db.npz --real-queries q.npz  # remap-extract files (or globs)
    PYTHONPATH=/path/to/faiss python benchmarks/index_bench.py --faiss  # faiss-cpu side by side (optional)
    ... --json results.json                             # machine-readable rows

Synthetic data (see ``synthetic``): landmarks -> scenes -> views, so each database vector has a handful of
true near neighbours, like a landmark photo; queries are new views of database scenes.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from index_bench_data import blobs, synthetic  # noqa: E402
from index_bench_faiss import run_faiss  # noqa: E402
from index_bench_measure import built, result_row, search_sweep, timed  # noqa: E402

from remap_jax.search.index import Index  # noqa: E402
from remap_jax.search.index_options import default_scann_options, tree_leaves  # noqa: E402
from remap_jax.search.scann_backend import import_scann  # noqa: E402

ROW_KINDS = ("default", "pq", "tree", "tree-int8", "tree-f32")


def scann_builds(n: int, d: int, pq_list, pq_bits, kinds, leaves_sweep=None, reorder_sweep=(100, 300)):
    """(name, build options, [search options]) per ScaNN build; several search settings share one build."""
    leaves = tree_leaves(n)
    searched = leaves_sweep or search_sweep(leaves)
    builds = []
    if "default" in kinds:
        own = default_scann_options(n, d)
        own_searched = max(1, own["leaves"] // 20) if own["leaves"] else None
        extra = [{"leaves_to_search": s} for s in searched if own["leaves"] and s != own_searched]
        builds.append(("scann default", {}, [{}] + extra))
    for m in pq_list:
        code = {"pq_bytes": m, "pq_bits": pq_bits}
        if "pq" in kinds:
            builds.append((f"scann PQ{m}", {**code, "leaves": 0, "reorder": 0}, [{}]))
        if "tree" in kinds:
            builds.append(
                (f"scann tree+PQ{m}", {**code, "reorder": 0}, [{"leaves_to_search": s} for s in searched])
            )
        for kind, dtype in (("tree-int8", "int8"), ("tree-f32", "float32")):
            if kind in kinds:
                opts = {**code, "reorder": max(reorder_sweep), "reorder_dtype": dtype}
                sweep = [{"leaves_to_search": s, "reorder": r} for s in searched for r in reorder_sweep]
                builds.append((f"scann tree+PQ{m}+{kind.split('-')[1]}", opts, sweep))
    return builds


def _save_scann(index, folder):
    index.save(folder)


def run_scann(name, opts, sweep, db, queries, k, truth, train_size):
    ix, build_s, rss = built(
        lambda: Index.build(db, method="scann", training_sample_size=train_size, **opts),
        _save_scann,
        Index.load,
    )
    rss -= ix.ids.nbytes  # ids are not part of bytes/vector either (int64 row numbers here)
    rows = []
    for search in sweep:
        ix.search_positions(queries[:8], k, **search)  # warm up
        (found, _), search_s = timed(lambda s=search: ix.search_positions(queries, k, **s), repeats=3)
        params = {
            **{key: ix.options[key] for key in ("leaves", "leaves_to_search", "reorder")},
            **search,
            "pq": f"{ix.code_bytes}B/{ix.options['pq_bits']}bit",
        }
        if params["leaves"]:
            params["tree"] = ("spherical" if ix.options["spherical_tree"] else "k-means") + (
                "+residual" if ix.options["residual_codes"] else ""
            )
        else:
            params.pop("leaves_to_search")
        if params["reorder"]:
            params["reorder"] = f"{params['reorder']} {ix.options['reorder_dtype']}"
        row = result_row(name, params, build_s, ix.memory_bytes_per_vector, search_s, found, truth,
                         len(queries))
        row["rss_bytes_per_vector"] = rss / len(db)
        rows.append(row)
    return rows


def bench_dataset(label, db, queries, args, has_faiss):
    n, d = db.shape
    k = 100
    print(f"\n== {label}: database {n} x {d}, {len(queries)} queries, k={k}", flush=True)
    print(HEADER, flush=True)
    t0 = time.perf_counter()
    exact = Index.build(db, method="exact")
    build_s = time.perf_counter() - t0
    exact.search_positions(queries[:8], k)  # compile
    exact.search_positions(queries, k)  # compile the full query batches too
    (truth, _), exact_s = timed(functools.partial(exact.search_positions, queries, k), repeats=2)
    rows = [result_row("exact (JAX)", {}, build_s, 4 * d, exact_s, truth, truth, len(queries))]
    rows[0]["rss_bytes_per_vector"] = 4 * d  # the database itself (not copied by the index)
    print(_format_row(rows[-1], rows[0]), flush=True)
    del exact
    pq_list = [] if args.exact_only else [m for m in args.pq_bytes if m <= d]
    kinds = [] if args.exact_only else args.rows
    leaves_sweep = [int(x) for x in args.leaves_to_search.split(",")] if args.leaves_to_search else None
    reorder_sweep = [int(x) for x in args.reorder_sweep.split(",")]
    if kinds:
        import_scann()  # TensorFlow + ScaNN load once, outside the build timings and memory deltas
    for name, opts, sweep in scann_builds(n, d, pq_list, args.pq_bits, kinds, leaves_sweep, reorder_sweep):
        for row in run_scann(name, opts, sweep, db, queries, k, truth, args.train_size):
            rows.append(row)
            print(_format_row(row, rows[0]), flush=True)
        gc.collect()
    if has_faiss and not args.exact_only:
        for m in args.faiss_pq_bytes:
            if m <= d and d % m == 0:
                for row in run_faiss(db, queries, k, m, truth, args.train_size, leaves_sweep, reorder_sweep):
                    rows.append(row)
                    print(_format_row(row, rows[0]), flush=True)
                gc.collect()
    for r in rows:
        r["dataset"] = label
        r["speedup_vs_exact"] = r["queries_per_s"] / rows[0]["queries_per_s"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
    print(
        f"peak resident memory of this process so far: {peak:.1f} GiB "
        f"(database alone: {db.nbytes / 2**30:.1f} GiB)"
    )
    return rows


def _params_text(params) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _format_row(r, exact):
    return (
        f"{r['method']:<28} {_params_text(r['params']):<90} {r['build_s']:>7.1f} {r['bytes_per_vector']:>6d} "
        f"{r.get('rss_bytes_per_vector', float('nan')):>6.0f} {r['queries_per_s']:>9.1f} "
        f"{r['queries_per_s'] / exact['queries_per_s']:>7.1f}x "
        f"{r['recall@1']:>5.3f} {r['recall@10']:>5.3f} {r['recall@100']:>5.3f}"
    )


HEADER = (
    f"{'method':<28} {'options':<90} {'build s':>7} {'B/vec':>6} {'RSS/v':>6} {'queries/s':>9} "
    f"{'vs exact':>8} {'R@1':>5} {'R@10':>5} {'R@100':>5}"
)


def markdown(rows) -> str:
    lines = [
        "| data | method | options | build s | bytes/vector | RSS bytes/vector | queries/s | vs exact | "
        "R@1 | R@10 | R@100 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {_params_text(r['params'])} | {r['build_s']:.1f} | "
            f"{r['bytes_per_vector']} | {r.get('rss_bytes_per_vector', float('nan')):.0f} | "
            f"{r['queries_per_s']:.0f} | {r['speedup_vs_exact']:.1f}x | {r['recall@1']:.3f} | "
            f"{r['recall@10']:.3f} | {r['recall@100']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000", help="database sizes, comma separated")
    p.add_argument("--dims", default="512,2048", help="dimensions, comma separated")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--pq-bytes", default="16,32,64,128", help="PQ code sizes (bytes per vector)")
    p.add_argument("--pq-bits", type=int, default=4, choices=(4, 8), help="bits per ScaNN sub-vector code")
    p.add_argument("--rows", default=",".join(ROW_KINDS), help=f"ScaNN rows, some of {','.join(ROW_KINDS)}")
    p.add_argument("--clusters", type=int, default=0, help="synthetic landmarks (default n / 100)")
    p.add_argument("--views", type=int, default=10, help="synthetic views per scene")
    p.add_argument("--spread", type=float, default=0.5, help="synthetic scene offset within a landmark")
    p.add_argument("--noise", type=float, default=0.25, help="synthetic view offset within a scene")
    p.add_argument("--train-size", type=int, default=100_000, help="training sample for PQ and trees")
    p.add_argument(
        "--blobs",
        action="store_true",
        help="plain clustered data instead: --clusters centres (default 1000), --noise per dimension (give "
        "e.g. 0.35), queries = database rows + --query-noise",
    )
    p.add_argument("--query-noise", type=float, default=0.3, help="--blobs: query offset (norm, about)")
    p.add_argument("--big", action="store_true", help="allow the 1M x 2048 case (8 GB database)")
    p.add_argument("--quick", action="store_true", help="small run: 20k x 128 and 20k x 512, 200 queries")
    p.add_argument(
        "--real", nargs="+", help="real descriptors .npz files or globs (remap-extract) as database"
    )
    p.add_argument(
        "--real-queries", nargs="+", help="query descriptors .npz files or globs; default: 1000 rows held out"
    )
    p.add_argument("--faiss", action="store_true", help="add faiss IVF-PQ rows (needs faiss-cpu importable)")
    p.add_argument(
        "--exact-only", action="store_true", help="only exact search (e.g. the 1M x 2048 memory check)"
    )
    p.add_argument(
        "--leaves-to-search", help="leaves (lists) searched, comma separated (default 2%%,5%%,10%% of them)"
    )
    p.add_argument("--reorder-sweep", default="100,300", help="candidates re-scored, comma separated")
    p.add_argument("--no-pure-pq", action="store_true", help="skip the tree-less PQ builds (rows without pq)")
    p.add_argument("--faiss-pq-bytes", help="PQ sizes for the faiss rows (default: --pq-bytes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.dims, args.queries, args.pq_bytes = "20000", "256", 200, "16,64"
    args.pq_bytes = [int(x) for x in args.pq_bytes.split(",")]
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(args.rows) - set(ROW_KINDS))
    if unknown:
        p.error(f"--rows: unknown {unknown}; expected some of {ROW_KINDS}")
    if args.no_pure_pq:
        args.rows = [r for r in args.rows if r != "pq"]
    args.faiss_pq_bytes = (
        [int(x) for x in args.faiss_pq_bytes.split(",")] if args.faiss_pq_bytes else args.pq_bytes
    )
    has_faiss = False
    if args.faiss:
        try:
            import faiss  # noqa: F401

            has_faiss = True
        except ImportError:
            print(
                "faiss not importable: skipping faiss rows (pip install faiss-cpu into a separate --target)"
            )
    import jax

    machine = (
        f"{platform.machine()} {os.cpu_count()} cores, JAX {jax.__version__} on {jax.devices()[0].platform}"
    )
    print(f"machine: {machine}")
    rows = []
    if args.real:
        from remap_jax.describe.descriptor_files import load_features

        db, _ = load_features(args.real)
        if args.real_queries:
            queries, _ = load_features(args.real_queries)
        else:
            rng = np.random.default_rng(args.seed)
            held = rng.choice(len(db), min(args.queries, len(db) // 10), replace=False)
            queries, db = db[held], np.delete(db, held, axis=0)
        rows += bench_dataset(
            f"real {os.path.basename(args.real[0])}", db, np.asarray(queries, np.float32), args, has_faiss
        )
    else:
        for d in [int(x) for x in args.dims.split(",")]:
            for n in [int(x) for x in args.sizes.split(",")]:
                if n * d * 4 > (4 << 30) and not args.big:
                    print(
                        f"\nskipping {n} x {d} ({n * d * 4 / 2**30:.0f} GiB database): pass --big to run it"
                    )
                    continue
                if args.blobs:
                    clusters = args.clusters or 1000
                    db, queries = blobs(n, args.queries, d, clusters, args.noise, args.query_noise, args.seed)
                    label = f"blobs {n // 1000}k x {d}"
                else:
                    clusters = args.clusters or max(10, n // 100)
                    db, queries = synthetic(
                        n, args.queries, d, clusters, args.views, args.spread, args.noise, args.seed
                    )
                    label = f"synthetic {n // 1000}k x {d}"
                rows += bench_dataset(label, db, queries, args, has_faiss)
                del db
                gc.collect()
                _write_json(args.json, machine, rows)  # partial results survive a later failure
    print("\n" + HEADER)
    for r in rows:
        print(
            _format_row(
                r, next(x for x in rows if x["dataset"] == r["dataset"] and x["method"] == "exact (JAX)")
            )
        )
    print("\n" + markdown(rows))
    _write_json(args.json, machine, rows)
    if args.json:
        print(f"wrote {args.json}")


def _write_json(path, machine, rows):
    if path:
        with open(path, "w") as f:
            json.dump({"machine": machine, "argv": sys.argv[1:], "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
