"""Index benchmark: exact JAX search vs ScaNN product-quantised search (vs faiss IVF-PQ when installed).

For each database (synthetic clustered vectors, or real descriptors with --real) it measures, side by side in
one run: build time, memory bytes per vector, queries/s (all queries searched at k=100, one batch), recall@1,
@10, @100 against exact search, and the speed-up over exact search.

recall@k = |approximate top-k  intersect  exact top-k| / k, averaged over queries (so recall@1 is the fraction
of queries whose exact nearest neighbour comes first).

    python benchmarks/index_bench.py --quick            # a few minutes: 20k x 256, PQ 16 and 64
    python benchmarks/index_bench.py                    # 100k and 1M, D=512 and 2048 (1M x 2048 needs --big)
    python benchmarks/index_bench.py --sizes 1000000 --dims 2048 --big   # 8 GB database: once, carefully
    python benchmarks/index_bench.py --real db.npz --real-queries q.npz  # remap-extract files
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
import math
import os
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remap_jax.index import Index  # noqa: E402


def synthetic(
    n: int, n_queries: int, d: int, clusters: int, views: int, spread: float, noise: float, seed: int
):
    """Clustered unit vectors shaped like landmark descriptors, generated in blocks (bounded memory).

    ``clusters`` landmark centres; around each, scenes (``n / views`` in all, offset ``spread``); around each
    scene, its views (offset ``noise``): a database image has about ``views`` near neighbours, then its
    landmark, then everything else. Dimension j is scaled by (1 + j)^-0.5 (a decaying, PCA-like spectrum).
    Queries are new views of database scenes. Returns float32 (n, d) and (n_queries, d), rows L2-normalised.
    """
    rng = np.random.default_rng(seed)
    scale = (1.0 + np.arange(d, dtype=np.float32)) ** -0.5
    centers = rng.standard_normal((clusters, d), dtype=np.float32) * scale
    num_scenes = max(1, n // views)
    scenes = centers[rng.integers(0, clusters, num_scenes)]
    scenes += spread * rng.standard_normal((num_scenes, d), dtype=np.float32) * scale

    def draw(count, rng):
        out = np.empty((count, d), np.float32)
        for s in range(0, count, 65536):
            m = min(65536, count - s)
            x = scenes[rng.integers(0, num_scenes, m)]
            x += noise * rng.standard_normal((m, d), dtype=np.float32) * scale
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s : s + m] = x
        return out

    return draw(n, rng), draw(n_queries, np.random.default_rng(seed + 1))


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = [len(np.intersect1d(a[:k], b[:k], assume_unique=True)) for a, b in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k


def _timed(fn, repeats: int = 1):
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def _row(name, params, build_s, bytes_per_vector, search_s, found, truth, n_queries):
    return {
        "method": name,
        "params": params,
        "build_s": round(build_s, 3),
        "bytes_per_vector": int(bytes_per_vector),
        "queries_per_s": n_queries / search_s,
        "recall@1": recall_at(found, truth, 1),
        "recall@10": recall_at(found, truth, 10),
        "recall@100": recall_at(found, truth, 100),
    }


def tree_leaves(n: int) -> int:
    """About sqrt(N) partitions (ScaNN's guidance), rounded to a multiple of 100 from 100k vectors up."""
    root = math.sqrt(n)
    return max(1, int(round(root / 100)) * 100) if n >= 100_000 else max(1, int(round(root)))


def search_sweep(leaves: int):
    """Partitions searched per query: about 2%, 4% and 10% of the leaves."""
    return sorted({max(1, leaves // 50), max(1, leaves // 25), max(1, leaves // 10)})


def scann_builds(n: int, d: int, pq_list, leaves_sweep=None, reorder_sweep=(100, 300), pure_pq=True):
    """(name, build options, [search options]) per ScaNN build; several search settings share one build.

    - ``PQm``: the compact signature alone (m bytes per vector), every code scored (no tree, no re-scoring).
    - ``tree+PQm+reorder``: k-means tree (about sqrt(N) leaves) + PQ codes + exact float32 re-scoring of the
      top candidates, swept over leaves searched and candidates re-scored.
    """
    leaves = tree_leaves(n)
    builds = []
    for m in pq_list:
        aq = {"anisotropic_threshold": 0.2}
        if pure_pq:
            builds.append((f"scann PQ{m}", {"pq_bytes": m, **aq}, [{}]))
        tree = {
            "pq_bytes": m,
            "leaves": leaves,
            "leaves_to_search": max(1, leaves // 25),
            "reorder": 300,
            **aq,
        }
        searched = leaves_sweep or search_sweep(leaves)
        sweep = [{"leaves_to_search": s, "reorder": r} for s in searched for r in reorder_sweep]
        builds.append((f"scann tree+PQ{m}+reorder", tree, sweep))
    return builds


def run_scann(name, opts, sweep, db, queries, k, truth, train_size):
    t0 = time.perf_counter()
    ix = Index.build(db, method="scann", training_sample_size=train_size, **opts)
    build_s = time.perf_counter() - t0
    rows = []
    for search in sweep:
        ix.search_positions(queries[:8], k, **search)  # warm up
        (found, _), search_s = _timed(lambda s=search: ix.search_positions(queries, k, **s), repeats=2)
        params = {
            **{key: v for key, v in opts.items() if key not in ("leaves_to_search", "reorder")},
            **search,
        }
        rows.append(
            _row(name, params, build_s, ix.memory_bytes_per_vector, search_s, found, truth, len(queries))
        )
    return rows


def run_faiss(db, queries, k, m, truth, train_size):
    """faiss IVF-PQ (m bytes, 8-bit codes) over the same sweep of probed lists, then with exact refinement."""
    import faiss

    nlist = tree_leaves(len(db))
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(db.shape[1])
    base = faiss.IndexIVFPQ(quantizer, db.shape[1], nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = db[np.sort(rng.choice(len(db), min(len(db), train_size), replace=False))]
    base.train(sample)
    refine = faiss.IndexRefineFlat(base)
    refine.add(db)  # adds the codes to base and keeps float32 vectors for refinement
    build_s = time.perf_counter() - t0
    rows = []
    for nprobe in search_sweep(nlist):
        base.nprobe = nprobe
        (_, found), search_s = _timed(lambda: base.search(queries, k))
        # IVF-PQ memory: m code bytes + an 8-byte id per vector in the inverted lists
        params = {"pq_bytes": m, "nlist": nlist, "nprobe": nprobe}
        rows.append(_row(f"faiss IVF-PQ{m}", params, build_s, m + 8, search_s, found, truth, len(queries)))
        refine.k_factor = 3.0
        (_, found), search_s = _timed(lambda: refine.search(queries, k))
        rows.append(
            _row(
                f"faiss IVF-PQ{m}+refine",
                {**params, "k_factor": 3},
                build_s,
                m + 8 + 4 * db.shape[1],
                search_s,
                found,
                truth,
                len(queries),
            )
        )
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
    (truth, _), exact_s = _timed(functools.partial(exact.search_positions, queries, k))
    rows = [_row("exact (JAX)", {}, build_s, 4 * d, exact_s, truth, truth, len(queries))]
    print(_format_row(rows[-1], rows[0]), flush=True)
    del exact
    pq_list = [] if args.exact_only else [m for m in args.pq_bytes if m <= d]
    leaves_sweep = [int(x) for x in args.leaves_to_search.split(",")] if args.leaves_to_search else None
    reorder_sweep = [int(x) for x in args.reorder_sweep.split(",")]
    for name, opts, sweep in scann_builds(n, d, pq_list, leaves_sweep, reorder_sweep, not args.no_pure_pq):
        for row in run_scann(name, opts, sweep, db, queries, k, truth, args.train_size):
            rows.append(row)
            print(_format_row(row, rows[0]), flush=True)
        gc.collect()
    if has_faiss and not args.exact_only:
        for m in args.faiss_pq_bytes:
            if m <= d and d % m == 0:
                for row in run_faiss(db, queries, k, m, truth, args.train_size):
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


def _format_row(r, exact):
    params = ",".join(
        f"{k}={v}" for k, v in r["params"].items() if k not in ("pq_bytes", "anisotropic_threshold")
    )
    return (
        f"{r['method']:<30} {params:<52} {r['build_s']:>8.1f} {r['bytes_per_vector']:>7d} "
        f"{r['queries_per_s']:>9.1f} {r['queries_per_s'] / exact['queries_per_s']:>7.1f}x "
        f"{r['recall@1']:>5.3f} {r['recall@10']:>5.3f} {r['recall@100']:>5.3f}"
    )


HEADER = (
    f"{'method':<30} {'options':<52} {'build s':>8} {'B/vec':>7} {'queries/s':>9} {'vs exact':>8} "
    f"{'R@1':>5} {'R@10':>5} {'R@100':>5}"
)


def markdown(rows) -> str:
    lines = [
        "| data | method | options | build s | bytes/vector | queries/s | x exact | R@1 | R@10 | R@100 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        opts = ", ".join(
            f"{k}={v}" for k, v in r["params"].items() if k not in ("pq_bytes", "anisotropic_threshold")
        )
        lines.append(
            f"| {r['dataset']} | {r['method']} | {opts} | {r['build_s']:.1f} | {r['bytes_per_vector']} | "
            f"{r['queries_per_s']:.0f} | {r['speedup_vs_exact']:.1f} | {r['recall@1']:.3f} | "
            f"{r['recall@10']:.3f} | {r['recall@100']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000", help="database sizes, comma separated")
    p.add_argument("--dims", default="512,2048", help="dimensions, comma separated")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--pq-bytes", default="16,32,64,128", help="PQ code sizes (bytes per vector)")
    p.add_argument("--clusters", type=int, default=0, help="synthetic landmarks (default n / 100)")
    p.add_argument("--views", type=int, default=10, help="synthetic views per scene")
    p.add_argument("--spread", type=float, default=0.5, help="synthetic scene offset within a landmark")
    p.add_argument("--noise", type=float, default=0.25, help="synthetic view offset within a scene")
    p.add_argument("--train-size", type=int, default=100_000, help="training sample for PQ and trees")
    p.add_argument("--big", action="store_true", help="allow the 1M x 2048 case (8 GB database)")
    p.add_argument("--quick", action="store_true", help="small run: 20k x 128 and 20k x 512, 200 queries")
    p.add_argument("--real", help="real descriptors .npz (remap-extract format) as the database")
    p.add_argument("--real-queries", help="query descriptors .npz; default: 1000 database rows held out")
    p.add_argument("--faiss", action="store_true", help="add faiss IVF-PQ rows (needs faiss-cpu importable)")
    p.add_argument(
        "--exact-only", action="store_true", help="only exact search (e.g. the 1M x 2048 memory check)"
    )
    p.add_argument("--leaves-to-search", help="ScaNN leaves searched, comma separated (default 2%%,4%%,10%%)")
    p.add_argument("--reorder-sweep", default="100,300", help="ScaNN candidates re-scored, comma separated")
    p.add_argument("--no-pure-pq", action="store_true", help="skip the tree-less PQ builds")
    p.add_argument("--faiss-pq-bytes", help="PQ sizes for the faiss rows (default: --pq-bytes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.dims, args.queries, args.pq_bytes = "20000", "256", 200, "16,64"
    args.pq_bytes = [int(x) for x in args.pq_bytes.split(",")]
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
        from remap_jax.index_cli import read_features

        db, _ = read_features(args.real)
        db = np.ascontiguousarray(db, np.float32)
        if args.real_queries:
            queries, _ = read_features(args.real_queries)
        else:
            rng = np.random.default_rng(args.seed)
            held = rng.choice(len(db), min(args.queries, len(db) // 10), replace=False)
            queries, db = db[held], np.delete(db, held, axis=0)
        rows += bench_dataset(
            f"real {os.path.basename(args.real)}", db, np.asarray(queries, np.float32), args, has_faiss
        )
    else:
        for d in [int(x) for x in args.dims.split(",")]:
            for n in [int(x) for x in args.sizes.split(",")]:
                if n * d * 4 > (4 << 30) and not args.big:
                    print(
                        f"\nskipping {n} x {d} ({n * d * 4 / 2**30:.0f} GiB database): pass --big to run it"
                    )
                    continue
                clusters = args.clusters or max(10, n // 100)
                db, queries = synthetic(
                    n, args.queries, d, clusters, args.views, args.spread, args.noise, args.seed
                )
                rows += bench_dataset(f"synthetic {n // 1000}k x {d}", db, queries, args, has_faiss)
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
