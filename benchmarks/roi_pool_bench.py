"""Times ROI max-pooling side by side on the same tensors.

(a) `roi_max_pool` under jit, (b) the classic formulation (a jitted loop that slices each region and takes
its max), (c) a jitted full-map max: one read of the map, the memory-bound floor. The calls are
interleaved (one timed call of each per round, after an untimed one), so load from other jobs falls on
all of them alike.
`--variants` also times the other lowerings of `roi_max_pool` on the same tensors (the float-domain CPU
lowering for 16-bit maps, and the gather lowering) and prints them with their ratios to the same floor.

    python benchmarks/roi_pool_bench.py                  # the two ResNet shapes, float32 and bfloat16
    python benchmarks/roi_pool_bench.py --shape 8x24x32x2048 --dtype float32 --json
    python benchmarks/roi_pool_bench.py --variants --clock process   # CPU time: steadier on a busy machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from remap_jax.nn import roi_pool  # noqa: E402
from remap_jax.nn.regions import rmac_regions  # noqa: E402
from remap_jax.nn.roi_pool import roi_max_pool  # noqa: E402

DEFAULT_SHAPES = [
    ("stage5 @1024x768", (8, 24, 32, 2048)),
    ("stage4 @1024x768", (8, 48, 64, 1024)),
]


def naive_roi_max_pool(features, regions):
    """The classic formulation: one slice + max per region."""
    return jnp.stack([features[:, y : y + h, x : x + w].max(axis=(1, 2)) for y, x, h, w in regions], axis=1)


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def first_call_seconds(fns: dict, x) -> dict:
    """{name: seconds of the first call}: tracing and compilation (plus one run)."""
    seconds = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        seconds[name] = time.perf_counter() - start
    return seconds


def time_fns(fns: dict, x, repeats: int, clock: str) -> dict:
    """{name: median milliseconds per call}, the calls interleaved round by round.

    Each timed call follows an untimed call of the same function, so each one finds the caches as its own
    previous call left them (not as another function did). `clock="process"` counts the CPU time of all
    of this process's threads instead of wall time: on a machine shared with other jobs it varies less,
    but it adds up the threads.
    """
    read = CLOCKS[clock]
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            jax.block_until_ready(fn(x))
            start = read()
            jax.block_until_ready(fn(x))
            times[name].append(read() - start)
    return {name: float(np.median(times[name]) * 1e3) for name in fns}


def lowering_variants(dtype) -> dict:
    """{label: fn(features, regions)} for every lowering of `roi_max_pool` that runs on this dtype.

    The first is what `method="auto"` takes on this backend; the float-domain CPU lowering is private API,
    timed here to show what the int16-key lowering of 16-bit maps saves.
    """
    if jax.default_backend() != "cpu":
        return {
            "gather (auto)": lambda v, r: roi_max_pool(v, r, "gather"),
            "slices": lambda v, r: roi_max_pool(v, r, "slices"),
        }
    variants = {}
    if jnp.dtype(dtype).itemsize == 2:
        variants["slices: int16 keys, rows then columns (auto)"] = lambda v, r: roi_max_pool(v, r, "slices")

        def float_domain(v, r):  # the float32 per-cell lowering, which float32 maps take, on the 16-bit map
            regions = roi_pool.validate_regions(r, v.shape[1], v.shape[2])
            plan = roi_pool._plan(regions.tobytes(), len(regions))
            cuts = plan.row_cuts.tolist(), plan.col_cuts.tolist()
            cells = roi_pool._cells_by_slices(v, *cuts, lambda p: p.astype(jnp.float32))
            return roi_pool._pool_cells(cells, plan, -jnp.inf).astype(v.dtype)

        variants["slices: float32 per-cell maxima"] = float_domain
    else:
        variants["slices: per-cell maxima (auto)"] = lambda v, r: roi_max_pool(v, r, "slices")
    variants["gather"] = lambda v, r: roi_max_pool(v, r, "gather")
    return variants


def run(shapes, dtypes, levels: int, repeats: int, method: str, variants: bool = False, clock: str = "wall"):
    rows, variant_rows = [], []
    for label, shape in shapes:
        for dtype_name in dtypes:
            dtype = jnp.dtype(dtype_name)
            x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32).astype(dtype)
            regions = rmac_regions(shape[1], shape[2], levels)
            fns = {
                "roi_max_pool": jax.jit(lambda v, r=regions: roi_max_pool(v, r, method)),
                "naive": jax.jit(lambda v, r=regions: naive_roi_max_pool(v, r)),
                "full_max": jax.jit(lambda v: v.max(axis=(1, 2))),
            }
            extra = lowering_variants(dtype) if variants else {}
            for name, fn in extra.items():
                fns[name] = jax.jit(lambda v, f=fn, r=regions: f(v, r))
            compile_s = first_call_seconds(fns, x)
            expected = np.asarray(fns["naive"](x).astype(jnp.float32))
            for name in ["roi_max_pool", *extra]:
                np.testing.assert_array_equal(np.asarray(fns[name](x).astype(jnp.float32)), expected)
            timings = time_fns(fns, x, repeats, clock)
            result = {
                "shape": label,
                "BxHxWxC": "x".join(map(str, shape)),
                "dtype": dtype_name,
                "R": len(regions),
                "clock": clock,
            }
            for name in ("roi_max_pool", "naive", "full_max"):
                result[f"{name}_ms"] = timings[name]
                result[f"{name}_compile_s"] = compile_s[name]
            map_bytes = x.size * dtype.itemsize
            result["speedup_vs_naive"] = result["naive_ms"] / result["roi_max_pool_ms"]
            result["ratio_to_floor"] = result["roi_max_pool_ms"] / result["full_max_ms"]
            result["roi_GBps"] = map_bytes / (result["roi_max_pool_ms"] * 1e-3) / 1e9
            result["floor_GBps"] = map_bytes / (result["full_max_ms"] * 1e-3) / 1e9
            rows.append(result)
            for name in extra:
                ms = timings[name]
                variant_rows.append(
                    {
                        "shape": label,
                        "dtype": dtype_name,
                        "lowering": name,
                        "ms": ms,
                        "compile_s": compile_s[name],
                        "full_max_ms": result["full_max_ms"],
                        "ratio_to_floor": ms / result["full_max_ms"],
                    }
                )
    return rows, variant_rows


def format_table(rows) -> str:
    header = (
        "| shape | B x H x W x C | dtype | R | roi_max_pool ms | naive ms | full-map max ms "
        "| speed-up vs naive | x floor | roi GB/s | floor GB/s |"
    )
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['BxHxWxC']} | {r['dtype']} | {r['R']} | {r['roi_max_pool_ms']:.2f} | "
            f"{r['naive_ms']:.2f} | {r['full_max_ms']:.2f} | {r['speedup_vs_naive']:.1f}x | "
            f"{r['ratio_to_floor']:.1f}x | {r['roi_GBps']:.1f} | {r['floor_GBps']:.1f} |"
        )
    return "\n".join(lines)


def format_variants(rows) -> str:
    lines = ["| shape | dtype | lowering | ms | full-map max ms | x floor | compile s |", "|" + "---|" * 7]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['lowering']} | {r['ms']:.2f} | {r['full_max_ms']:.2f} | "
            f"{r['ratio_to_floor']:.1f}x | {r['compile_s']:.1f} |"
        )
    return "\n".join(lines)


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--shape: expected BxHxWxC, got {text!r}")
    return parts


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=parse_shape, action="append", help="BxHxWxC (repeatable)")
    parser.add_argument(
        "--dtype", action="append", choices=["float32", "bfloat16", "float16"], help="repeatable"
    )
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--method", default="auto", choices=["auto", "slices", "gather"])
    parser.add_argument("--variants", action="store_true", help="also time the other lowerings")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS), help="wall or process CPU time")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args(argv)
    shapes = [("custom", s) for s in args.shape] if args.shape else DEFAULT_SHAPES
    dtypes = args.dtype or ["float32", "bfloat16"]
    rows, variant_rows = run(
        shapes, dtypes, args.levels, args.repeats, args.method, args.variants, args.clock
    )
    if args.json:
        print(json.dumps({"device": str(jax.devices()[0]), "rows": rows, "variants": variant_rows}, indent=2))
    else:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, "
            f"load average {load:.2f}, {args.clock} clock, median of {args.repeats} interleaved calls"
        )
        print(format_table(rows))
        if variant_rows:
            print()
            print(format_variants(variant_rows))


if __name__ == "__main__":
    main()
