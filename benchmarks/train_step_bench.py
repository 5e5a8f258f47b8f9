r"""Training throughput of one REMAP train step (forward + backward + optimiser update), side by side.

For ResNet-50/101 REMAP (taps layer4.1 + layer4.2, whitening), at a few image sizes and tuple batch sizes,
float32 vs bfloat16 compute, on 1 and on N devices (the N-device case runs in a subprocess; on a CPU-only
machine XLA_FLAGS=--xla_force_host_platform_device_count=N simulates the devices, which measures the
data-parallel program's overhead, not a speed-up: the simulated devices share the same cores).

    python benchmarks/train_step_bench.py --quick            # ResNet-50, 128x160, 1 vs 8 devices, f32/bf16
    python benchmarks/train_step_bench.py                    # ResNet-50/101, 224x224 and 384x512
    python benchmarks/train_step_bench.py --archs resnet101 --sizes 768x1024 --tuples 8 --json

Each row: ms per step (median of --repeats timed steps after one compile + warm-up step), training
images/s (tuples x (2 + negatives) / step time) and the ratio to the float32 1-device row of the same
arch/size/batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="resnet50,resnet101", help="comma-separated backbone names")
    p.add_argument("--sizes", default="224x224,384x512", help="comma-separated HxW training image sizes")
    p.add_argument("--tuples", default="8", help="comma-separated tuple batch sizes (global, all devices)")
    p.add_argument("--negatives", type=int, default=1, help="negatives per tuple (images = tuples x (2+N))")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--devices", default="1,8", help="comma-separated device counts; >1 runs in a subprocess")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--quick", action="store_true", help="resnet50, 128x160, 8 tuples, 2 timed steps")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.archs, args.sizes, args.tuples, args.repeats = "resnet50", "128x160", "8", 2
    return args


def _configs(args):
    for arch in args.archs.split(","):
        for size in args.sizes.split(","):
            h, w = (int(v) for v in size.lower().split("x"))
            for tuples in (int(t) for t in args.tuples.split(",")):
                for dtype in args.dtypes.split(","):
                    yield arch, (h, w), tuples, dtype


def time_train_step(arch: str, size: tuple[int, int], tuples: int, negatives: int, dtype: str, repeats: int,
                    mesh=None, with_cost: bool = False) -> dict:
    """One row: a REMAP train step of `arch` (the default taps: the last two blocks, whitening, Adam, triplet
    loss) on `tuples` x (2 + `negatives`) uint8 images of `size` (H, W), data-parallel over `mesh` (default:
    every device); median of `repeats` timed steps after one compile + first step. `with_cost` adds "cost":
    XLA's flops and bytes of the compiled step (`roofline.cost`, one device's share)."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    sys.path.insert(0, ROOT)
    from remap_jax.nn.backbones import default_taps
    from train import build, optim, validate
    from train import step as train_step
    from train.configs.base import get_base_config

    mesh = mesh or train_step.make_mesh()
    n_dev = mesh.devices.size
    data = NamedSharding(mesh, P("data"))
    h, w = size
    c = get_base_config()
    c.model.arch, c.model.taps, c.model.dtype = arch, default_taps(arch), dtype
    c.image_size = c.test_image_size = (h, w)
    c.num_negatives, c.batch_size, c.queries_per_epoch = negatives, tuples, tuples
    c.learning_rate, c.optimizer = 1e-6, "adam"
    validate.validate_config(c)
    model = build.build_model(c)
    variables = build.initial_variables(model, c, jax.random.key(0))
    tx, _ = optim.make_optimizer(c, variables["params"], updates_per_epoch=100)
    state = jax.device_put(train_step.create_train_state(variables, tx), NamedSharding(mesh, P()))
    step = train_step.make_train_step(model, tx, loss="triplet", margin=0.1, mesh=mesh)
    padded = train_step.pad_to_multiple(tuples, n_dev)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (padded, 2 + negatives, h, w, 3), dtype=np.uint8)
    weights = (np.arange(padded) < tuples).astype(np.float32)
    images, weights = train_step.to_global_batch(images, data), train_step.to_global_batch(weights, data)
    t0 = time.perf_counter()
    state, metrics = step(state, images, weights)  # compile + first step
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = step(state, images, weights)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    ms = 1e3 * float(np.median(times))
    n_images = tuples * (2 + negatives)
    row = dict(arch=arch, size=f"{h}x{w}", tuples=tuples, images=n_images, dtype=dtype, devices=n_dev,
               device_kind=mesh.devices.flat[0].device_kind, ms_per_step=round(ms, 1),
               images_per_s=round(n_images / (ms / 1e3), 2), compile_s=round(compile_s, 1),
               loss=float(metrics["loss"]))
    if with_cost:
        import roofline

        row["cost"] = roofline.cost(step, state, images, weights)
    return row


def run_worker(args) -> list[dict]:
    """Time every configuration on all devices visible to this process."""
    results = []
    for arch, size, tuples, dtype in _configs(args):
        row = time_train_step(arch, size, tuples, args.negatives, dtype, args.repeats)
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def run_devices(args, n: int) -> list[dict]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    if n > 1:
        flags.append(f"--xla_force_host_platform_device_count={n}")
    env["XLA_FLAGS"] = " ".join(flags)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--archs", args.archs,
           "--sizes", args.sizes, "--tuples", args.tuples, "--negatives", str(args.negatives),
           "--dtypes", args.dtypes, "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        print(f"warning: the {n}-device worker exited with {proc.returncode}", file=sys.stderr)
    return rows


def format_table(rows: list[dict]) -> str:
    base = {(r["arch"], r["size"], r["tuples"]): r["images_per_s"] for r in rows
            if r["dtype"] == "float32" and r["devices"] == 1}
    head = (f"{'arch':<10} {'size':>9} {'tuples':>6} {'images':>6} {'dtype':>8} {'devices':>7} "
            f"{'ms/step':>9} {'img/s':>8} {'vs f32x1':>8} {'compile s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        b = base.get((r["arch"], r["size"], r["tuples"]))
        ratio = f"{r['images_per_s'] / b:.2f}x" if b else "-"
        lines.append(f"{r['arch']:<10} {r['size']:>9} {r['tuples']:>6} {r['images']:>6} {r['dtype']:>8} "
                     f"{r['devices']:>7} {r['ms_per_step']:>9.1f} {r['images_per_s']:>8.2f} {ratio:>8} "
                     f"{r['compile_s']:>9.1f}")
    kinds = sorted({f"{r['devices']} x {r['device_kind']}" for r in rows})
    lines.append(f"devices: {', '.join(kinds)}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    rows = []
    for n in (int(v) for v in args.devices.split(",")):
        rows += run_devices(args, n)
    rows.sort(key=lambda r: (r["arch"], r["size"], r["tuples"], r["devices"], r["dtype"] != "float32"))
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))


if __name__ == "__main__":
    main()
