"""Evaluation speed: revisited-protocol scoring (Easy/Medium/Hard) of 70 queries against databases of
5k .. 1M images, vectorised `evaluate_revisited` vs the classic per-query `np.isin` scan; the exact ranking
step, `rank_database` (exact JAX index: device scoring, one host sort per query) vs the previous numpy path
(a stable argsort per query column), side by side with the speed-up, an exact equality check of the ranks and
the peak memory of each; and the synthetic_landmarks build.

    python benchmarks/eval_bench.py            # 5k, 100k, 1M database images
    python benchmarks/eval_bench.py --quick    # 5k, 100k
    python benchmarks/eval_bench.py --sections ranking --sizes 1000000   # one part, chosen sizes
    python benchmarks/eval_bench.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import numpy as np

from remap_jax.evaluation import metrics
from remap_jax.search import ranking


def classic_revisited(ranks, gnd, kappas=(1, 5, 10)):
    """Reference: per query and setup, find positives/junk by scanning the ranking with np.isin."""
    kappas = np.asarray(kappas)
    out = {}
    for name, setup in metrics.revisited_setups(gnd).items():
        aps = []
        for q, g in enumerate(setup):
            ok, junk = np.asarray(g["ok"]), np.asarray(g["junk"])
            if ok.size == 0:
                continue
            pos = np.flatnonzero(np.isin(ranks[:, q], ok))
            jpos = np.flatnonzero(np.isin(ranks[:, q], junk))
            pos = pos - np.searchsorted(jpos, pos)
            aps.append(metrics.average_precision(pos, ok.size))
        out[name] = 100.0 * float(np.mean(aps))
    return out


def _timeit(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def bench_scoring(sizes, num_queries=70, repeat=2, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        ranks = np.stack([rng.permutation(n) for _ in range(num_queries)], axis=1)
        gnd = []
        for _ in range(num_queries):  # disjoint easy / hard / junk, like the real ground truth
            ids = rng.choice(min(n, 5000), 100, replace=False)
            gnd.append({"easy": ids[:30], "hard": ids[30:70], "junk": ids[70:]})
        t_vec, res = _timeit(lambda ranks=ranks, gnd=gnd: metrics.evaluate_revisited(ranks, gnd), repeat)
        t_ref, ref = _timeit(lambda ranks=ranks, gnd=gnd: classic_revisited(ranks, gnd), 1)
        for s in ("easy", "medium", "hard"):  # same numbers, or the comparison is meaningless
            assert abs(res[s]["mAP"] - ref[s]) < 1e-9, (s, res[s]["mAP"], ref[s])
        rows.append({"num_db": n, "num_queries": num_queries, "vectorised_s": t_vec, "isin_scan_s": t_ref,
                     "speedup": t_ref / t_vec})
    return rows


def numpy_rank_database(qvecs, dbvecs, k=None, chunk=262_144):
    """Reference: the previous `rank_database`, numpy only (a stable argsort per query column)."""
    qvecs, dbvecs = np.asarray(qvecs, np.float32), np.asarray(dbvecs, np.float32)
    n = dbvecs.shape[0]
    if k is None or k >= n:
        scores = dbvecs @ qvecs.T  # (num_db, num_queries)
        return np.argsort(-scores, axis=0, kind="stable").astype(np.int64)
    best_s = np.full((0, qvecs.shape[0]), -np.inf, np.float32)
    best_i = np.zeros((0, qvecs.shape[0]), np.int64)
    for start in range(0, n, chunk):
        s = dbvecs[start : start + chunk] @ qvecs.T
        i = np.broadcast_to(np.arange(start, start + s.shape[0])[:, None], s.shape)
        all_s, all_i = np.concatenate([best_s, s]), np.concatenate([best_i, i])
        if all_s.shape[0] > k:
            part = np.argpartition(-all_s, k - 1, axis=0)[:k]
            all_s, all_i = np.take_along_axis(all_s, part, axis=0), np.take_along_axis(all_i, part, axis=0)
        best_s, best_i = all_s, all_i
    order = np.stack([np.lexsort((best_i[:, q], -best_s[:, q])) for q in range(best_s.shape[1])], axis=1)
    return np.take_along_axis(best_i, order, axis=0)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _timed_peak(fn, repeat=1):
    """(best wall seconds, result, largest peak resident bytes above the start, CPU seconds of that best call)
    over ``repeat`` calls; RSS is sampled every 5 ms on a thread. CPU seconds count every thread of this
    process (numpy, XLA's pool), so on a shared machine they show the work done, wall seconds the waiting."""
    best, peak_above, result, cpu = float("inf"), 0, None, float("nan")
    for _ in range(repeat):
        result = None  # the previous result is freed before the next call
        start_rss, peak, done = _rss_bytes(), [0], threading.Event()

        def sample(peak=peak, done=done):
            while not done.is_set():
                peak[0] = max(peak[0], _rss_bytes())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        c, t = time.process_time(), time.perf_counter()
        result = fn()
        wall, used = time.perf_counter() - t, time.process_time() - c
        if wall < best:
            best, cpu = wall, used
        done.set()
        sampler.join()
        peak_above = max(peak_above, max(peak[0], _rss_bytes()) - start_rss)
    return best, result, peak_above, cpu


def quantised_database(n, dim, rng, levels=64, block=65_536):
    """(n, dim) float32 with entries in {-1, -63/64, ..., 1}: every inner product is exact in float32 (a sum
    of at most 2^21 multiples of 1/4096 for dim 512, within float32's 24-bit mantissa), so numpy's and XLA's
    matmuls give bitwise equal scores and the two rankings can be compared exactly; the coarse values make
    exact ties common."""
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, block):
        m = min(block, n - s)
        out[s : s + m] = rng.integers(-levels, levels + 1, (m, dim), dtype=np.int8) / np.float32(levels)
    return out


def bench_ranking(sizes, num_queries=70, dim=512, seed=0, top=100, repeat=2):
    """Full-depth and top-k ranking: the previous numpy path vs `rank_database` (exact JAX index), one run."""
    import jax

    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        db = quantised_database(n, dim, rng)
        q = quantised_database(num_queries, dim, rng)
        warm = db[: min(n, 65_536)]  # same chunk and query shapes as below: compiles outside the timings
        ranking.rank_database(q, warm)
        ranking.rank_database(q, warm, k=top)
        # best of `repeat` for each: the first touch of fresh memory is slow on some VMs, whichever runs first
        t_old, old, mem_old, cpu_old = _timed_peak(lambda db=db, q=q: numpy_rank_database(q, db), repeat)
        t_new, new, mem_new, cpu_new = _timed_peak(lambda db=db, q=q: ranking.rank_database(q, db), repeat)
        identical = bool(np.array_equal(old, new))
        ranked = (db @ q[0])[new[:, 0]]  # query 0's scores in ranked order
        tie_fraction = float(np.mean(ranked[1:] == ranked[:-1]))
        full_cut = np.array(new[:top])
        del old, new, ranked
        t_old_top, old_top, _, _ = _timed_peak(lambda db=db, q=q: numpy_rank_database(q, db, k=top))
        t_new_top, new_top, _, _ = _timed_peak(lambda db=db, q=q: ranking.rank_database(q, db, k=top))
        # the previous top-k path picked arbitrary members of a tie group at the cut (argpartition)
        rows.append(
            {
                "num_db": n,
                "dim": dim,
                "num_queries": num_queries,
                "numpy_full_s": t_old,
                "jax_full_s": t_new,
                "full_speedup": t_old / t_new,
                "numpy_full_cpu_s": cpu_old,
                "jax_full_cpu_s": cpu_new,
                "load_average": os.getloadavg()[0],
                "full_identical": identical,
                "adjacent_ties": tie_fraction,
                "numpy_full_peak_mb": mem_old / 2**20,
                "jax_full_peak_mb": mem_new / 2**20,
                f"numpy_top{top}_s": t_old_top,
                f"jax_top{top}_s": t_new_top,
                "top_identical": bool(np.array_equal(old_top, new_top)),
                "top_equals_full_cut": bool(np.array_equal(new_top, full_cut)),
                "numpy_top_equals_full_cut": bool(np.array_equal(old_top, full_cut)),
                "device": jax.devices()[0].platform,
            }
        )
        del db
    return rows


def print_ranking(rows):
    r0 = rows[0]
    print(f"\nExact ranking ({r0['num_queries']} queries, D={r0['dim']}, JAX on {r0['device']})")
    print(
        f"{'db images':>10s} {'numpy full s':>13s} {'index full s':>13s} {'speed-up':>9s} "
        f"{'CPU s numpy/index':>18s} {'identical':>10s} {'ties':>5s} {'peak MB numpy/index':>20s} "
        f"{'top100 s numpy/index':>21s} {'top100 = full[:100]':>20s} {'load':>5s}"
    )
    for r in rows:
        cut = f"{r['numpy_top_equals_full_cut']}/{r['top_equals_full_cut']}"
        cpu = f"{r['numpy_full_cpu_s']:.1f}/{r['jax_full_cpu_s']:.1f}"
        peak = f"{r['numpy_full_peak_mb']:.0f}/{r['jax_full_peak_mb']:.0f}"
        top = f"{r['numpy_top100_s']:.2f}/{r['jax_top100_s']:.2f}"
        print(
            f"{r['num_db']:>10d} {r['numpy_full_s']:>13.2f} {r['jax_full_s']:>13.2f} "
            f"{r['full_speedup']:>8.1f}x {cpu:>18s} {str(r['full_identical']):>10s} "
            f"{r['adjacent_ties']:>5.2f} {peak:>20s} {top:>21s} {cut:>20s} {r['load_average']:>5.1f}"
        )
    print(
        "identical: np.array_equal of the two full rankings; ties: fraction of adjacent ranks with equal "
        "scores (query 0); peak MB: resident memory above the start during the call (database excluded); "
        "top100 = full[:100]: each path's top-100 cut equals the head of the full ranking; load: 1-minute "
        "load average of the machine after the row"
    )


def bench_synthetic():
    from remap_jax.data.synthetic.config import SyntheticConfig
    from remap_jax.data.synthetic.dataset import generate

    t, data = _timeit(lambda: generate(SyntheticConfig()), 1)
    n = sum(len(data[s]["views"]) for s in ("train", "val")) + len(data["index"]) + len(data["query"])
    return {"images": n, "seconds": t, "images_per_s": n / t}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="skip the 1M-image case")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--no-synthetic", action="store_true", help="skip the synthetic_landmarks build timing")
    p.add_argument("--sections", default="scoring,ranking,synthetic", help="parts to run, comma separated")
    p.add_argument("--sizes", help="database sizes, comma separated (default 5k,100k,1M; --quick 5k,100k)")
    args = p.parse_args()
    sizes = [5_000, 100_000] if args.quick else [5_000, 100_000, 1_000_000]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    sections = set(args.sections.split(","))
    report = {"machine": f"{platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()}"}
    if "scoring" in sections:
        report["scoring"] = bench_scoring(sizes)
    if "ranking" in sections:
        report["ranking"] = bench_ranking(sizes)
    if "synthetic" in sections and not args.no_synthetic:
        report["synthetic"] = bench_synthetic()
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"machine: {report['machine']}")
    if "scoring" in report:
        print("\nRevisited scoring (Easy+Medium+Hard, 70 queries)")
        print(f"{'db images':>10s} {'vectorised s':>13s} {'isin scan s':>12s} {'speed-up':>9s}")
        for r in report["scoring"]:
            print(
                f"{r['num_db']:>10d} {r['vectorised_s']:>13.3f} {r['isin_scan_s']:>12.3f} "
                f"{r['speedup']:>8.1f}x"
            )
    if "ranking" in report:
        print_ranking(report["ranking"])
    if "synthetic" in report:
        s = report["synthetic"]
        print(f"\nsynthetic_landmarks (default config): {s['images']} images in {s['seconds']:.1f} s "
              f"({s['images_per_s']:.0f} images/s)")


if __name__ == "__main__":
    main()
