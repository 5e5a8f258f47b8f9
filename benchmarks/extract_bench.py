"""Extraction throughput: images/s of the whole REMAP descriptor (backbone + head) at 1024x768.

For every architecture, compute dtype (float32, bfloat16) and batch size, times the jitted descriptor
function on uint8 batches already on the device (normalisation included), and the head alone on the tap
maps to give the head's share of the time. Extra rows: the same model with BatchNorm not folded, and the
full `Extractor` pipeline (JPEG decoding + resizing in threads + device prefetch) for the first
configuration, to show how much the input pipeline costs, and on the CPU the same model compiled with
plain `jax.jit` (jaxlib's default YNNPACK fusions instead of `remap_jax.runtime.xla`'s options).
Weights are random (speed does not depend on them).

    python benchmarks/extract_bench.py --quick                 # resnet50, batch 1, both dtypes
    python benchmarks/extract_bench.py                         # resnet50/101, resnext101_32x8d, batches 1,2
    python benchmarks/extract_bench.py --archs resnet101 --batch-sizes 1,8,32 --repeats 20 --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remap_jax.data.images import encode_jpeg  # noqa: E402
from remap_jax.model import RetrievalModel, init_variables  # noqa: E402
from remap_jax.nn.backbones import create_backbone, default_taps  # noqa: E402
from remap_jax.nn.heads import REMAPHead  # noqa: E402
from remap_jax.runtime import xla  # noqa: E402

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _timeit(fn, *args, repeats: int) -> float:
    """Seconds per call (median of `repeats`), after one warm-up call that compiles."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@functools.cache
def _variables(arch: str, size: tuple[int, int]):
    model = _model(arch, "float32", True)
    return jax.device_put(init_variables(model, jax.random.key(0), (1, *size, 3)))


def _model(arch: str, dtype: str, fold_bn: bool) -> RetrievalModel:
    taps = default_taps(arch)
    backbone = create_backbone(arch, dtype=DTYPES[dtype], fold_bn=fold_bn)
    return RetrievalModel(backbone=backbone, head=REMAPHead(layers=taps, levels=4), taps=taps)


def measure(arch, dtype, batch, size, repeats, fold_bn=True, default_fusions=False) -> dict:
    """The jitted descriptor (what `Extractor.describe_batch` runs: `remap_jax.runtime.xla`'s compiler
    options),
    or with `default_fusions` plain `jax.jit` (jaxlib's default CPU library fusions), and the head's share."""
    model = _model(arch, dtype, fold_bn)
    variables = _variables(arch, size)
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (batch, *size, 3), dtype=np.uint8))
    jit = jax.jit if default_fusions else xla.jit
    describe = jit(model.apply)  # uint8 pixels in: the model normalises on the device
    total = _timeit(describe, variables, images, repeats=repeats)
    # the head alone, on the tap maps the backbone produces
    maps = jit(lambda v, x: model.apply(v, x, method=RetrievalModel.features))(variables, images)
    head = jit(lambda p, m: model.head.apply({"params": p}, m))
    head_time = _timeit(head, variables["params"]["head"], maps, repeats=repeats)
    variant = "jaxlib's default CPU fusions" if default_fusions else "compute"
    return {"arch": arch, "dtype": dtype, "batch": batch, "fold_bn": fold_bn, "variant": variant,
            "seconds_per_batch": total, "images_per_s": batch / total, "head_share": head_time / total}


def measure_pipeline(arch, dtype, batch, size, repeats) -> dict:
    """The Extractor end to end on JPEG bytes of a different size (decode + resize + prefetch + compute)."""
    from remap_jax.describe.extractor import Extractor

    model = _model(arch, dtype, True)
    extractor = Extractor(model, _variables(arch, size), image_size=size, batch_size=batch, workers=4)
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    from remap_jax.data.images import resize_to

    jpeg = encode_jpeg(resize_to(small, (900, 1200)))
    n = batch * max(2, repeats)
    extractor([jpeg] * batch)  # compile
    t0 = time.perf_counter()
    extractor([jpeg] * n)
    seconds = time.perf_counter() - t0
    return {"arch": arch, "dtype": dtype, "batch": batch, "fold_bn": True, "variant": "pipeline",
            "seconds_per_batch": seconds / (n / batch), "images_per_s": n / seconds, "head_share": None}


def format_table(rows, device: str) -> str:
    base = {}
    for r in rows:
        if r["variant"] == "compute" and r["dtype"] == "float32" and r["fold_bn"]:
            base[(r["arch"], r["batch"])] = r["images_per_s"]
    lines = [
        f"device: {device}",
        "| arch | dtype | batch | variant | images/s | s/batch | head share | vs float32 folded |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        variant = r["variant"] if r["fold_bn"] else "BN not folded"
        ref = base.get((r["arch"], r["batch"]))
        ratio = f"{r['images_per_s'] / ref:.2f}x" if ref else "-"
        share = "-" if r["head_share"] is None else f"{100 * r['head_share']:.1f}%"
        lines.append(
            f"| {r['arch']} | {r['dtype']} | {r['batch']} | {variant} | {r['images_per_s']:.3f} | "
            f"{r['seconds_per_batch']:.3f} | {share} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="resnet50, batch 1, 1 repeat: a smoke run")
    p.add_argument("--archs", default="resnet50,resnet101,resnext101_32x8d")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--batch-sizes", help="default 1,2 on CPU, 1,8,32 on accelerators")
    p.add_argument("--size", default="768,1024", help="HEIGHT,WIDTH (default landscape 1024x768)")
    p.add_argument("--repeats", type=int, help="timed calls per row (default 2 on CPU, 10 elsewhere)")
    p.add_argument("--no-extras", action="store_true", help="skip the unfolded-BN and pipeline rows")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)

    on_cpu = jax.default_backend() == "cpu"
    archs = args.archs.split(",")
    batches = [int(b) for b in (args.batch_sizes or ("1,2" if on_cpu else "1,8,32")).split(",")]
    repeats = args.repeats or (2 if on_cpu else 10)
    if args.quick:
        archs, batches, repeats = ["resnet50"], [1], 1
    size = tuple(int(v) for v in args.size.split(","))
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {os.cpu_count()} host cores)"
    rows = []
    for arch in archs:
        for dtype in args.dtypes.split(","):
            for batch in batches:
                rows.append(measure(arch, dtype, batch, size, repeats))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if not args.no_extras:
        arch, dtype, batch = archs[0], args.dtypes.split(",")[0], batches[-1]
        rows.append(measure(arch, dtype, batch, size, repeats, fold_bn=False))
        if on_cpu:  # what remap_jax.runtime.xla's CPU options bring, side by side
            rows.append(measure(arch, dtype, batch, size, repeats, default_fusions=True))
        rows.append(measure_pipeline(arch, dtype, batch, size, repeats))
    table = format_table(rows, device)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "size": list(size), "repeats": repeats, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
