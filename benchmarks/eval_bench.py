"""Evaluation speed: revisited-protocol scoring (Easy/Medium/Hard) of 70 queries against databases of
5k .. 1M images, vectorised `evaluate_revisited` vs the classic per-query `np.isin` scan, plus the exact
ranking step and the synthetic_landmarks build.

    python benchmarks/eval_bench.py            # 5k, 100k, 1M database images
    python benchmarks/eval_bench.py --quick    # 5k, 100k
    python benchmarks/eval_bench.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from remap_jax import evaluate as E


def classic_revisited(ranks, gnd, kappas=(1, 5, 10)):
    """Reference: per query and setup, find positives/junk by scanning the ranking with np.isin."""
    kappas = np.asarray(kappas)
    out = {}
    for name, setup in E.revisited_setups(gnd).items():
        aps = []
        for q, g in enumerate(setup):
            ok, junk = np.asarray(g["ok"]), np.asarray(g["junk"])
            if ok.size == 0:
                continue
            pos = np.flatnonzero(np.isin(ranks[:, q], ok))
            jpos = np.flatnonzero(np.isin(ranks[:, q], junk))
            pos = pos - np.searchsorted(jpos, pos)
            aps.append(E.average_precision(pos, ok.size))
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
        t_vec, res = _timeit(lambda ranks=ranks, gnd=gnd: E.evaluate_revisited(ranks, gnd), repeat)
        t_ref, ref = _timeit(lambda ranks=ranks, gnd=gnd: classic_revisited(ranks, gnd), 1)
        for s in ("easy", "medium", "hard"):  # same numbers, or the comparison is meaningless
            assert abs(res[s]["mAP"] - ref[s]) < 1e-9, (s, res[s]["mAP"], ref[s])
        rows.append({"num_db": n, "num_queries": num_queries, "vectorised_s": t_vec, "isin_scan_s": t_ref,
                     "speedup": t_ref / t_vec})
    return rows


def bench_ranking(sizes, num_queries=70, dim=512, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        db = rng.standard_normal((n, dim), dtype=np.float32)
        q = rng.standard_normal((num_queries, dim), dtype=np.float32)
        t_full, _ = _timeit(lambda db=db, q=q: E.rank_database(q, db), 1)
        t_top, _ = _timeit(lambda db=db, q=q: E.rank_database(q, db, k=100), 1)
        rows.append({"num_db": n, "dim": dim, "full_rank_s": t_full, "top100_s": t_top,
                     "ratio": t_full / t_top})
    return rows


def bench_synthetic():
    from remap_jax.data import synthetic

    t, data = _timeit(lambda: synthetic.generate(synthetic.SyntheticConfig()), 1)
    n = sum(len(data[s]["views"]) for s in ("train", "val")) + len(data["index"]) + len(data["query"])
    return {"images": n, "seconds": t, "images_per_s": n / t}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="skip the 1M-image case")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--no-synthetic", action="store_true", help="skip the synthetic_landmarks build timing")
    args = p.parse_args()
    sizes = [5_000, 100_000] if args.quick else [5_000, 100_000, 1_000_000]
    report = {
        "machine": f"{platform.machine()} {platform.processor() or ''} cpus={__import__('os').cpu_count()}",
        "scoring": bench_scoring(sizes),
        "ranking": bench_ranking(sizes[:2] if args.quick else sizes),
    }
    if not args.no_synthetic:
        report["synthetic"] = bench_synthetic()
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"machine: {report['machine']}")
    print("\nRevisited scoring (Easy+Medium+Hard, 70 queries)")
    print(f"{'db images':>10s} {'vectorised s':>13s} {'isin scan s':>12s} {'speed-up':>9s}")
    for r in report["scoring"]:
        print(
            f"{r['num_db']:>10d} {r['vectorised_s']:>13.3f} {r['isin_scan_s']:>12.3f} {r['speedup']:>8.1f}x"
        )
    print("\nExact ranking (70 queries, D=512)")
    print(f"{'db images':>10s} {'full rank s':>12s} {'top-100 s':>10s} {'ratio':>7s}")
    for r in report["ranking"]:
        print(f"{r['num_db']:>10d} {r['full_rank_s']:>12.3f} {r['top100_s']:>10.3f} {r['ratio']:>6.1f}x")
    if "synthetic" in report:
        s = report["synthetic"]
        print(f"\nsynthetic_landmarks (default config): {s['images']} images in {s['seconds']:.1f} s "
              f"({s['images_per_s']:.0f} images/s)")


if __name__ == "__main__":
    main()
