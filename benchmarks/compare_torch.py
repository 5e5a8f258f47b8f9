r"""Extraction side by side with PyTorch: remap-jax vs torchvision + a cirtorch-style R-MAC, same weights.

The PyTorch side (torchvision ResNet up to layer4 + R-MAC written like cnnimageretrieval-pytorch's
`cirtorch.layers.functional.rmac`: the region grid of `remap_jax.nn.regions.rmac_regions`, max-pool per
region,
L2 per region, sum, L2) runs in another virtualenv as a subprocess (`benchmarks/_torch_worker.py`, which
imports only torch, torchvision and numpy); torch is never a dependency of remap-jax. The remap-jax side
is `Extractor.from_pretrained(arch, weights, taps=("layer4",), head="rmac")` (BatchNorm folded) in this
process. Both load the same seeded random weights, written here in torchvision naming (.safetensors) and
read by torchvision's `load_state_dict` and by `remap_jax.nn.backbones.load_pretrained`.

A timed call, on both sides: a uint8 (B, H, W, 3) batch already on the device -> normalisation -> backbone
-> R-MAC -> (B, D) descriptors on the host. The calls alternate (jax, torch, jax, torch, ...), one at a
time, with a short pause between them (idle thread pools stop spinning), after warm-up calls; the ratio
is median torch time / median jax time (> 1: remap-jax is faster). The descriptors of the same images are
compared: relative error max_i ||d_jax_i - d_torch_i|| / ||d_torch_i|| (about 1e-6 .. 1e-5 in float32).

Threads: both processes are pinned to the same `--threads` CPUs (sched_setaffinity, inherited by the
worker; XLA sizes its CPU thread pool from the affinity mask), torch additionally by
`torch.set_num_threads(N)` / `set_num_interop_threads(1)` and OMP_NUM_THREADS / MKL_NUM_THREADS; with
`--threads 1` XLA also gets `--xla_cpu_multi_thread_eigen=false`. `--xla-flags` adds XLA flags (to try
CPU options) and `--breakdown` times the parts of the jax side (transfer, normalisation, backbone, head).

Memory: by default both sides run with `remap_jax.runtime.host_memory`'s malloc settings (the jax side through
mallopt, the worker through the MALLOC_* variables glibc reads at start-up), so that neither pays page
faults on its per-call buffers, whose cost depends on the VM's state, not on the framework, and need not be
the same for both. `--retain-memory none` compares both as they ship (glibc's defaults),
`--retain-memory jax` remap-jax with the settings against PyTorch without.

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        numpy safetensors
    python benchmarks/compare_torch.py --torch-python /tmp/torchenv/bin/python                 # R-50, b1
    python benchmarks/compare_torch.py --torch-python /tmp/torchenv/bin/python --batch-sizes 1,8 \
        --threads 2 --repeats 5 --breakdown --json compare.json
    python benchmarks/compare_torch.py --torch-python ... --device cuda --dtype bfloat16 --batch-sizes 1,8,32
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_report import echo_row, print_and_save  # noqa: E402
from compare_torch_data import random_torchvision_weights, test_images  # noqa: E402
from compare_torch_sides import JaxSide, TorchWorker, pin_threads, thread_env, worker_env  # noqa: E402

from remap_jax.runtime import host_memory  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    """'768x1024' -> (768, 1024): HEIGHTxWIDTH in pixels."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--size: expected HEIGHTxWIDTH like 768x1024, got {text!r}")
    h, w = int(parts[0]), int(parts[1])
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"--size: expected at least 32x32 pixels, got {text}")
    return h, w


def parse_batches(text: str) -> list[int]:
    parts = text.split(",")
    if not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"--batch-sizes: expected positive integers like 1,8, got {text!r}")
    return [int(p) for p in parts]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch-python", help="python of a virtualenv with torch + torchvision (+ safetensors)")
    p.add_argument("--arch", default="resnet50", choices=["resnet50", "resnet101"])
    p.add_argument("--size", type=parse_size, default=(768, 1024), help="HEIGHTxWIDTH (default 768x1024)")
    p.add_argument("--batch-sizes", type=parse_batches, default=[1], help="comma separated (default 1)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each side (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per side and batch size")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per side before timing")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype; bfloat16: jax computes in bf16, torch autocasts (meant for CUDA)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--levels", type=int, default=3, help="R-MAC scales L (cirtorch's default 3)")
    p.add_argument("--include-global", action="store_true", help="add the whole-map region (as cirtorch)")
    p.add_argument("--pause-s", type=float, default=0.2, help="pause between alternating calls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for the jax side")
    p.add_argument("--jax-cpu-devices", type=int, default=1,
                   help="CPU devices for the jax side (e.g. = --threads: one per core, as the commands); "
                        "batches that divide by it are split over them")
    p.add_argument("--no-fold-bn", action="store_true", help="jax side: BatchNorm as its own op (not folded)")
    p.add_argument("--torch-channels-last", action="store_true", help="torch.channels_last on the torch side")
    p.add_argument("--breakdown", action="store_true", help="also time the parts of the jax side")
    p.add_argument("--no-torch", action="store_true", help="time the jax side alone (no torch venv needed)")
    p.add_argument("--retain-memory", default="both", choices=["both", "jax", "none"],
                   help="which sides get remap_jax.runtime.host_memory's malloc settings (freed buffers "
                        "stay in the process instead of page-faulting at every call): both (default: the "
                        "frameworks, not the VM's page faults), jax, or none (both as they ship)")
    p.add_argument("--json", help="write the rows and the setup to this file")
    args = p.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--threads and --repeats must be >= 1, --warmup >= 0")
    if not args.no_torch and not args.torch_python:
        p.error("--torch-python is required (or --no-torch to time the jax side alone)")
    return args


# ------------------------------------------------------------------------------------------- pure parts


def alternating_schedule(repeats: int, sides=("jax", "torch")) -> list[str]:
    """The order of the timed calls: jax, torch, jax, torch, ... (`repeats` calls of each side)."""
    return [side for _ in range(repeats) for side in sides]


def summarise(batch: int, jax_times, torch_times=None) -> dict:
    """Medians in seconds per batch and per image; ratio = torch median / jax median (> 1: jax faster)."""
    jax_s = float(np.median(jax_times))
    row = {"batch": batch, "jax_s": jax_s, "jax_s_per_img": jax_s / batch, "jax_times": list(jax_times)}
    if torch_times:
        torch_s = float(np.median(torch_times))
        row.update(torch_s=torch_s, torch_s_per_img=torch_s / batch, torch_times=list(torch_times),
                   ratio=torch_s / jax_s)
    return row


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max over rows of ||a_i - b_i|| / ||b_i|| for (N, D) arrays of equal shape."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"descriptors: shapes differ, {a.shape} vs {b.shape}")
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)))


# ----------------------------------------------------------------------------------------------- running


def compare_batch(jax_side: JaxSide, torch_side: TorchWorker | None, images: np.ndarray, args, tmp: str):
    """Warm-up, alternating timed calls and the descriptor check for one batch -> its row (a dict)."""
    batch = images.shape[0]
    jax_warm = jax_side.load(images, args.warmup)
    torch_warm = []
    if torch_side is not None:
        path = os.path.join(tmp, f"images_{batch}.npy")
        np.save(path, images)
        torch_warm = torch_side.request(cmd="load", images=path, warmup=max(1, args.warmup))["warmup_s"]
    times = {"jax": [], "torch": []}
    sides = ("jax", "torch") if torch_side is not None else ("jax",)
    for side in alternating_schedule(args.repeats, sides):
        time.sleep(args.pause_s)
        if side == "jax":
            times["jax"].append(jax_side.time_once())
        else:
            times["torch"].append(torch_side.request(cmd="time")["seconds"])
    row = summarise(batch, times["jax"], times["torch"])
    row.update(jax_first_call_s=jax_warm[0], torch_first_call_s=torch_warm[0] if torch_warm else None)
    jax_desc = jax_side.describe()
    row["dim"] = int(jax_desc.shape[1])
    if torch_side is not None:
        out = os.path.join(tmp, f"torch_desc_{batch}.npy")
        torch_side.request(cmd="describe", out=out)
        torch_desc = np.load(out)
        row["rel_error"] = relative_error(jax_desc, torch_desc)
        row["max_abs_diff"] = float(np.max(np.abs(jax_desc - torch_desc)))
    if args.breakdown:
        row["jax_breakdown_s"] = jax_side.breakdown(args.repeats)
    return row


def format_table(rows, setup: dict) -> str:
    lines = [
        f"{setup['arch']} {setup['size'][1]}x{setup['size'][0]} (WxH), {setup['dtype']}, {setup['device']}, "
        f"{setup['threads']} threads, R-MAC L={setup['levels']}, median of {setup['repeats']} alternating "
        f"calls; {setup['machine']}, load average {setup['load_before']:.2f} -> {setup['load_after']:.2f}; "
        f"malloc settings retained on: {setup.get('retain_memory', 'none')}",
        f"jax {setup['jax']}" + (f", torch {setup['torch']}, torchvision {setup['torchvision']}"
                                 if setup.get("torch") else ""),
        "",
        "| batch | remap-jax s/img | torch s/img | ratio (torch / jax) | descriptor rel. error "
        "| jax first call s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        torch_s = f"{r['torch_s_per_img']:.3f}" if "torch_s" in r else "-"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        err = f"{r['rel_error']:.1e}" if "rel_error" in r else "-"
        lines.append(f"| {r['batch']} | {r['jax_s_per_img']:.3f} | {torch_s} | {ratio} | {err} | "
                     f"{r['jax_first_call_s']:.1f} |")
    parts = [r for r in rows if "jax_breakdown_s" in r]
    if parts:
        lines += ["", "remap-jax parts, median s per batch:", "",
                  "| batch | transfer | normalise | backbone | head | whole call | backbone GFLOP "
                  "| GFLOP/s |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in parts:
            b = r["jax_breakdown_s"]
            flops = (f"{b['backbone_gflop']:.0f} | {b['backbone_gflops_per_s']:.0f}" if "backbone_gflop" in b
                     else "- | -")
            lines.append(f"| {r['batch']} | {b['transfer']:.4f} | {b['normalise']:.4f} | {b['backbone']:.3f} "
                         f"| {b['head']:.4f} | {b['whole']:.3f} | {flops} |")
    return "\n".join(lines)


def run(args) -> tuple[list[dict], dict]:
    """Runs the comparison; returns (rows, setup). Call after `pin_threads` / `thread_env` when timing."""
    import jax

    if args.device == "cuda" and jax.default_backend() != "gpu":
        raise SystemExit(f"--device cuda: jax runs on {jax.default_backend()!r}; expected a CUDA build of "
                         "jax (README: GPUs)")
    setup = {
        "arch": args.arch, "size": list(args.size), "dtype": args.dtype, "device": args.device,
        "threads": args.threads, "levels": args.levels, "repeats": args.repeats, "jax": jax.__version__,
        "jax_device": str(jax.devices()[0]), "jax_devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "fold_bn": not args.no_fold_bn, "retain_memory": args.retain_memory,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "load_before": os.getloadavg()[0],
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="compare_torch-") as tmp:
        weights = os.path.join(tmp, f"{args.arch}.safetensors")
        from safetensors.numpy import save_file

        save_file(random_torchvision_weights(args.arch, args.seed), weights)
        jax_side = JaxSide(args.arch, weights, args.size, args.levels, args.include_global, args.dtype,
                           fold_bn=not args.no_fold_bn)
        torch_side = None
        if not args.no_torch:
            torch_side = TorchWorker(args.torch_python, args, weights, worker_env(args))
        try:
            if torch_side is not None:
                setup.update(torch_side.request(cmd="info"))
            for batch in args.batch_sizes:
                images = test_images(batch, args.size, args.seed + batch)
                rows.append(compare_batch(jax_side, torch_side, images, args, tmp))
                echo_row(rows[-1])
        finally:
            if torch_side is not None:
                torch_side.close()
    setup["load_after"] = os.getloadavg()[0]
    return rows, setup


def main(argv=None):
    args = parse_args(argv)
    if args.retain_memory != "none":
        host_memory.retain_freed_memory()  # before JAX starts its threads
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        pin_threads(args.threads)
    # before jax starts (it reads XLA_FLAGS once)
    os.environ.update(thread_env(args.threads, args.xla_flags, args.jax_cpu_devices))
    rows, setup = run(args)
    print_and_save(format_table(rows, setup), args.json, rows, setup)
    return rows, setup


if __name__ == "__main__":
    main()
