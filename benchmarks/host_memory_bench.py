r"""What malloc settings bring to description, side by side in one run.

Malloc settings belong to a process (glibc reads its tunables once, XLA's threads keep the arena they started
with), so one worker process per setting describes the same images, and the parent alternates timed calls
between them (one call per side in turn, with a short pause, after warm-up calls). Sides (`--sides`):

- `default`: glibc's defaults (MALLOC_* and GLIBC_TUNABLES removed from the worker's environment);
- `retained`: `remap_jax.runtime.host_memory.retain_freed_memory()` applied first, as the extraction commands
do;
- `hugetlb`: `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35): malloc asks for transparent huge
  pages on the memory it maps, where the kernel's THP mode is `madvise`; only settable at start-up;
- `retained+hugetlb`: both.

Printed per configuration: each side's median seconds per call, its ratio to the first side (first /
side: > 1, faster than it), and the minor page faults and system CPU time of a call.

A call is `Extractor.describe_batch` (uint8 pixels already on the device -> normalisation -> backbone ->
REMAP head on the default taps -> descriptors on the host), the extractor of `benchmarks/suite.py`'s
`extract` block: random weights, except EfficientNet-Lite0's from its installed package when present.

    python benchmarks/host_memory_bench.py                                  # ResNet-50 and Lite0, batch 1
    python benchmarks/host_memory_bench.py --archs resnet50 --batch-sizes 1,8 --repeats 9 --json out.json \
        --sides default,retained,hugetlb,retained+hugetlb
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from _line_protocol import LineWorker, serve  # noqa: E402
from bench_report import echo_row, print_and_save  # noqa: E402
from compare_torch import alternating_schedule, parse_batches, parse_size  # noqa: E402

from remap_jax.runtime import host_memory  # noqa: E402

SIDES = ("default", "retained", "hugetlb", "retained+hugetlb")
HUGETLB = "glibc.malloc.hugetlb=1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="resnet50,efficientnet_lite0", help="comma separated")
    p.add_argument("--batch-sizes", type=parse_batches, default=[1], help="comma separated (default 1)")
    p.add_argument("--size", type=parse_size, default=(768, 1024),
                   help="HEIGHTxWIDTH of landscape inputs (default 768x1024)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=7, help="timed calls per side and configuration")
    p.add_argument("--warmup", type=int, default=6,
                   help="untimed calls per side (until freed buffers circulate)")
    p.add_argument("--pause-s", type=float, default=0.2, help="pause between alternating calls")
    p.add_argument("--sides", default="default,retained", help=f"comma separated, some of {','.join(SIDES)}; "
                   "ratios are to the first")
    p.add_argument("--json", help="also write the rows and the setup to this file")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sides = args.sides.split(",")
    if not set(args.sides) <= set(SIDES) or len(set(args.sides)) != len(args.sides) or len(args.sides) < 2:
        p.error(f"--sides: expected two or more of {','.join(SIDES)}, got {','.join(args.sides)}")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1, --warmup >= 0")
    return args


def side_environment(side: str, environ=None) -> dict[str, str]:
    """The worker's environment for `side`: `environ` (default: os.environ) without the variables that set
    glibc's malloc (or switch remap-jax's settings off), plus GLIBC_TUNABLES for the huge-page sides
    (`retained` is applied by the worker)."""
    environ = os.environ if environ is None else environ
    names = {variable for _, variable, _ in host_memory.SETTINGS.values()}
    names |= {"GLIBC_TUNABLES", host_memory.SWITCH}
    env = {k: v for k, v in environ.items() if k not in names}
    if side.endswith("hugetlb"):
        env["GLIBC_TUNABLES"] = HUGETLB
    return env


def summarise(config: dict, sides: list[str], times: dict[str, list[float]], faults: dict[str, list[int]],
              system: dict[str, list[float]]) -> dict:
    """One row: medians per side, and each side's ratio to the first (first / side seconds: > 1, faster)."""
    row = dict(config)
    for side in sides:
        row[f"{side}_s"] = float(np.median(times[side]))
        row[f"{side}_faults"] = int(np.median(faults[side]))
        row[f"{side}_system_s"] = float(np.median(system[side]))
        row[f"{side}_times"] = list(times[side])
        row[f"{side}_ratio"] = row[f"{sides[0]}_s"] / row[f"{side}_s"]
    return row


def format_table(rows: list[dict], setup: dict) -> str:
    sides = setup["sides"]
    lines = [f"describe_batch {setup['size'][1]}x{setup['size'][0]} (WxH), {setup['dtype']}, median of "
             f"{setup['repeats']} alternating calls; {setup['machine']}, load average "
             f"{setup['load_before']:.2f} -> {setup['load_after']:.2f}; jax {setup['jax']}, "
             f"{setup['device']}; cells: seconds per call (ratio to {sides[0]}; page faults; system seconds)",
             "", "| arch | batch | " + " | ".join(sides) + " |", "|---|---:|" + "---:|" * len(sides)]
    for r in rows:
        cells = [f"{r[f'{s}_s']:.3f} ({r[f'{s}_ratio']:.2f}x; {r[f'{s}_faults']}; {r[f'{s}_system_s']:.3f})"
                 for s in sides]
        lines.append(f"| {r['arch']} | {r['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the worker

class Describer:
    """A worker's state: the extractor of the current configuration and its batch on the device."""

    def __init__(self):
        self.call = None

    def handle(self, msg: dict) -> dict:
        import jax
        from suite_blocks_model import suite_extractor

        cmd = msg.get("cmd")
        if cmd == "info":
            device = jax.devices()[0]
            return {"jax": jax.__version__, "device": f"{device.device_kind} ({jax.default_backend()})"}
        if cmd == "load":
            extractor, _ = suite_extractor(msg["arch"], msg["dtype"], tuple(msg["size"]))
            rng = np.random.default_rng(0)
            images = jax.device_put(rng.integers(0, 256, (msg["batch"], *msg["size"], 3), dtype=np.uint8))
            self.call = lambda: np.asarray(extractor.describe_batch(images))
            for _ in range(msg["warmup"]):
                self.call()
            return {"loaded": True}
        if cmd == "time":
            if self.call is None:
                return {"error": "time: nothing loaded (send a load command first)"}
            before = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            self.call()
            seconds = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_SELF)
            return {"seconds": seconds, "faults": after.ru_minflt - before.ru_minflt,
                    "system_s": after.ru_stime - before.ru_stime}
        return {"error": f"unknown command {cmd!r}; expected info, load, time or quit"}


def run_worker(side: str) -> None:
    if side.startswith("retained"):
        host_memory.retain_freed_memory()  # as the extraction commands, before JAX starts its threads
    serve(Describer().handle)


# ------------------------------------------------------------------------------------------- the parent

def run(args) -> tuple[list[dict], dict]:
    import platform

    cmd = [sys.executable, os.path.abspath(__file__)]
    setup = {"size": list(args.size), "dtype": args.dtype, "repeats": args.repeats, "sides": args.sides,
             "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "load_before": os.getloadavg()[0],
             "settings": host_memory.settings({}), "glibc": platform.libc_ver()[1]}
    workers = {}
    for side in args.sides:
        env = {**side_environment(side), "TF_CPP_MIN_LOG_LEVEL": "3"}
        workers[side] = LineWorker([*cmd, "--worker", side], env, name=f"{side} worker")
    rows = []
    try:
        setup.update(workers[args.sides[0]].request(cmd="info"))
        for arch in args.archs.split(","):
            for batch in args.batch_sizes:
                config = {"arch": arch, "batch": batch}
                for worker in workers.values():
                    worker.request(cmd="load", arch=arch, dtype=args.dtype, size=list(args.size), batch=batch,
                                   warmup=args.warmup)
                times, faults, system = ({s: [] for s in args.sides} for _ in range(3))
                for side in alternating_schedule(args.repeats, args.sides):
                    time.sleep(args.pause_s)
                    reply = workers[side].request(cmd="time")
                    times[side].append(reply["seconds"])
                    faults[side].append(reply["faults"])
                    system[side].append(reply["system_s"])
                rows.append(summarise(config, args.sides, times, faults, system))
                echo_row(rows[-1])
    finally:
        for worker in workers.values():
            worker.close()
    setup["load_after"] = os.getloadavg()[0]
    return rows, setup


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return None
    rows, setup = run(args)
    print_and_save(format_table(rows, setup), args.json, rows, setup)
    return rows, setup


if __name__ == "__main__":
    main()
