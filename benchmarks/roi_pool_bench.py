"""Times ROI max-pooling side by side on the same tensors.

(a) `roi_max_pool` under jit, (b) the classic formulation (a jitted loop that slices each region and takes
its max), (c) a jitted full-map max: one read of the map, the memory-bound floor.

    python benchmarks/roi_pool_bench.py                  # the two ResNet shapes, float32 and bfloat16
    python benchmarks/roi_pool_bench.py --shape 8x24x32x2048 --dtype float32 --json
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

from remap_jax.ops.roi_pool import roi_max_pool  # noqa: E402
from remap_jax.regions import rmac_regions  # noqa: E402

DEFAULT_SHAPES = [
    ("stage5 @1024x768", (8, 24, 32, 2048)),
    ("stage4 @1024x768", (8, 48, 64, 1024)),
]


def naive_roi_max_pool(features, regions):
    """The classic formulation: one slice + max per region."""
    return jnp.stack([features[:, y : y + h, x : x + w].max(axis=(1, 2)) for y, x, h, w in regions], axis=1)


def time_fn(fn, x, repeats: int) -> tuple[float, float]:
    """(compile seconds, median milliseconds per call)."""
    start = time.perf_counter()
    fn(x).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return compile_s, float(np.median(times) * 1e3)


def run(shapes, dtypes, levels: int, repeats: int, method: str):
    rows = []
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
            np.testing.assert_array_equal(
                np.asarray(fns["roi_max_pool"](x).astype(jnp.float32)),
                np.asarray(fns["naive"](x).astype(jnp.float32)),
            )
            result = {
                "shape": label,
                "BxHxWxC": "x".join(map(str, shape)),
                "dtype": dtype_name,
                "R": len(regions),
            }
            for name, fn in fns.items():
                compile_s, ms = time_fn(fn, x, repeats)
                result[f"{name}_ms"] = ms
                result[f"{name}_compile_s"] = compile_s
            map_bytes = x.size * dtype.itemsize
            result["speedup_vs_naive"] = result["naive_ms"] / result["roi_max_pool_ms"]
            result["ratio_to_floor"] = result["roi_max_pool_ms"] / result["full_max_ms"]
            result["roi_GBps"] = map_bytes / (result["roi_max_pool_ms"] * 1e-3) / 1e9
            result["floor_GBps"] = map_bytes / (result["full_max_ms"] * 1e-3) / 1e9
            rows.append(result)
    return rows


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
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16"], help="repeatable")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--method", default="auto", choices=["auto", "slices", "gather"])
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args(argv)
    shapes = [("custom", s) for s in args.shape] if args.shape else DEFAULT_SHAPES
    dtypes = args.dtype or ["float32", "bfloat16"]
    rows = run(shapes, dtypes, args.levels, args.repeats, args.method)
    if args.json:
        print(json.dumps({"device": str(jax.devices()[0]), "rows": rows}, indent=2))
    else:
        print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs")
        print(format_table(rows))


if __name__ == "__main__":
    main()
