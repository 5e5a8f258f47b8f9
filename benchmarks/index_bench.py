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
import ctypes
import functools
import gc
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remap_jax.search.index import Index  # noqa: E402
from remap_jax.search.index_options import default_scann_options, tree_leaves  # noqa: E402
from remap_jax.search.scann_backend import import_scann  # noqa: E402


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


def blobs(n: int, n_queries: int, d: int, clusters: int, noise: float, query_noise: float, seed: int):
    """Plain clustered unit vectors (``--blobs``): ``clusters`` Gaussian centres, each row a centre plus
    ``noise`` per dimension; queries are database rows plus ``query_noise`` per dimension, re-normalised.
    Returns float32 (n, d) and (n_queries, d)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d), dtype=np.float32)
    db = np.empty((n, d), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        x = centers[rng.integers(0, clusters, m)] + noise * rng.standard_normal((m, d), dtype=np.float32)
        db[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = db[rng.choice(n, n_queries, replace=False)]
    q = q + query_noise * rng.standard_normal(q.shape, dtype=np.float32) / np.sqrt(d)
    return db, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


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


def search_sweep(leaves: int):
    """Partitions searched per query: about 2%, 5% and 10% of the leaves."""
    return sorted({max(1, leaves // 50), max(1, leaves // 20), max(1, leaves // 10)})


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


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trimmed_rss() -> int:
    """Resident bytes after a GC and glibc's malloc_trim (freed heap handed back), so deltas are live data."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the figure then includes freed heap
        pass
    return _rss_bytes()


def _built(build, save, load):
    """(index, build seconds, resident bytes of the index) for ``build()``.

    The built index is saved (``save(index, folder)``), dropped and loaded again (``load(folder)``); the
    bytes are what the load added to this process, so build-time temporaries that an index keeps until it
    is freed are not counted (ScaNN holds a few hundred bytes per vector more right after some builds).
    The loaded index is returned and searched.
    """
    t0 = time.perf_counter()
    index = build()
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="index_bench-") as tmp:
        folder = os.path.join(tmp, "index")
        save(index, folder)
        del index
        before = _trimmed_rss()
        index = load(folder)
        rss = max(0, _trimmed_rss() - before)
    return index, build_s, rss


def _save_scann(index, folder):
    index.save(folder)


def _save_faiss(index, folder):
    import faiss

    faiss.write_index(index, folder)


def _load_faiss(folder):
    import faiss

    return faiss.read_index(folder)


def run_scann(name, opts, sweep, db, queries, k, truth, train_size):
    ix, build_s, rss = _built(
        lambda: Index.build(db, method="scann", training_sample_size=train_size, **opts),
        _save_scann,
        Index.load,
    )
    rss -= ix.ids.nbytes  # ids are not part of bytes/vector either (int64 row numbers here)
    rows = []
    for search in sweep:
        ix.search_positions(queries[:8], k, **search)  # warm up
        (found, _), search_s = _timed(lambda s=search: ix.search_positions(queries, k, **s), repeats=3)
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
        row = _row(name, params, build_s, ix.memory_bytes_per_vector, search_s, found, truth, len(queries))
        row["rss_bytes_per_vector"] = rss / len(db)
        rows.append(row)
    return rows


def _faiss_ivfpq(db, sample, nlist, subq, bits):
    import faiss

    d = db.shape[1]
    quantizer = faiss.IndexFlatIP(d)
    if bits == 4:
        index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, subq, 4, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, nlist, subq, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    index.add(db)
    index.own_fields = True  # the IVF index frees its quantizer; keeps it alive meanwhile
    quantizer.this.disown()
    return index


def _faiss_refined(base, db, sample, kind):
    """``base`` re-ranked by int8 (SQ8) or float32 vectors of the whole database."""
    import faiss

    d = db.shape[1]
    if kind == "int8":
        vectors = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    else:
        vectors = faiss.IndexFlatIP(d)
    vectors.train(sample)
    vectors.add(db)
    refine = faiss.IndexRefine(base, vectors)
    refine.own_refine_index = True
    vectors.this.disown()
    return refine


def run_faiss(db, queries, k, m, truth, train_size, leaves_sweep=None, reorder_sweep=(100,)):
    """faiss IVF-PQ (m 8-bit codes) and IVF-PQ fast-scan (2m 4-bit codes), each alone and re-ranked by int8
    (SQ8) and float32 vectors, over the lists-probed sweep. Ids: 8 bytes per vector in the inverted lists."""
    import faiss

    n, d = db.shape
    nlist = tree_leaves(n)
    rng = np.random.default_rng(0)
    sample = db[np.sort(rng.choice(n, min(n, train_size), replace=False))]
    rows = []
    for name, subq, bits in ((f"faiss IVF-PQ{m}", m, 8), (f"faiss IVF-PQ{2 * m}x4fs", 2 * m, 4)):
        if d % subq:
            continue
        base, build_s, rss = _built(
            lambda s=subq, b=bits: _faiss_ivfpq(db, sample, nlist, s, b), _save_faiss, _load_faiss
        )
        code_bytes = subq * bits // 8 + 8
        refiners = []
        for kind, extra in (("int8", d), ("f32", 4 * d)):
            refine, refine_s, refine_rss = _built(
                lambda kind=kind, base=base: _faiss_refined(faiss.clone_index(base), db, sample, kind),
                _save_faiss,
                _load_faiss,
            )
            refiners.append((kind, refine, refine_s, refine_rss, extra))
        for nprobe in leaves_sweep or search_sweep(nlist):
            base.nprobe = nprobe
            (_, found), search_s = _timed(lambda base=base: base.search(queries, k), repeats=3)
            params = {"nlist": nlist, "nprobe": nprobe}
            row = _row(name, params, build_s, code_bytes, search_s, found, truth, len(queries))
            row["rss_bytes_per_vector"] = rss / n
            rows.append(row)
            for kind, refine, refine_s, refine_rss, extra in refiners:
                faiss.extract_index_ivf(refine.base_index).nprobe = nprobe
                for reorder in reorder_sweep:
                    refine.k_factor = max(1.0, reorder / k)
                    (_, found), search_s = _timed(lambda refine=refine: refine.search(queries, k), repeats=3)
                    params_r = {**params, "rerank": f"{int(refine.k_factor * k)} {kind}"}
                    row = _row(
                        f"{name}+{kind}", params_r, build_s + refine_s, code_bytes + extra, search_s, found,
                        truth, len(queries),
                    )  # fmt: skip
                    row["rss_bytes_per_vector"] = refine_rss / n  # its own copy of the codes included
                    rows.append(row)
        refiners.clear()
        gc.collect()
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
    (truth, _), exact_s = _timed(functools.partial(exact.search_positions, queries, k), repeats=2)
    rows = [_row("exact (JAX)", {}, build_s, 4 * d, exact_s, truth, truth, len(queries))]
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
