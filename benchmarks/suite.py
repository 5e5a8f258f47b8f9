r"""The accelerator benchmark suite: one command, one JSON and one Markdown table of every speed figure.

    python benchmarks/suite.py --out suite_out                   # accelerator (GPU/TPU): about 8 minutes
    python benchmarks/suite.py --out suite_out --quick           # the 2-core CPU: within 10 minutes
    python benchmarks/suite.py --out /tmp/s --quick --tiny       # structure check (tests): seconds
    python benchmarks/suite.py --out suite_out --timeout-s 300 --blocks extract,roi_pool --budget extract=200

Blocks, in the order they run, each with its ratio to a baseline measured in the same process (sizes
below are the accelerator's; `--quick` shrinks them, see `suite_presets.preset`):

- `roi_pool`: `roi_max_pool` (both lowerings, `slices` and `gather`) on stage-4 and stage-5 ResNet maps at
  1024x768 (batch 32; 8 on a CPU), float32 and bfloat16, vs the classic loop of slices (`naive`) and the
  full-map max (the floor); `benchmarks/roi_pool_bench.py` (`run`), which checks the results equal the loop's.
- `exact_search`: `remap_jax.search.exact.exact_search` top-100 of 1000 queries in 1M x 512 unit vectors vs a
  numpy brute force (chunked matmul + argpartition, `benchmarks/eval_bench.py`); equal results checked.
- `ranking`: evaluation at 1M database images (`benchmarks/eval_bench.py`): `rank_database` full depth and
  top-100 vs the previous numpy path (identical ranks checked), and revisited scoring vs the np.isin scan.
- `input`: does the host keep the device fed? images/s the host side delivers through the Extractor's
  input pipeline (`Extractor.input_batches`: read, decode with JPEG draft scaling, resize, batch, copy to
  the device) with 1 decoding thread and with one per core, from 1024x768 and from 12-megapixel JPEGs
  (written into a temporary folder from scikit-image's photos; the 12 MP ones also without draft), next
  to the images/s the device consumes for the same model (`describe_batch` on a batch already there,
  ResNet-101 bfloat16 batch 32 on an accelerator); `vs device` < 1 means the host starves the device.
- `extract`: images/s of the descriptor (uint8 pixels on the device -> normalisation -> backbone -> REMAP
  head on the default taps) through `Extractor.from_pretrained`, ResNet-50/101 and EfficientNet-Lite0..4,
  float32 and bfloat16, batch 1/8/32 at 1024x768; ratio to float32 at the same arch and batch; head share.
- `rerank`: SuperGlobal re-ranking (`remap_jax.search.rerank`) of the top 100 at 10k, 100k and 1M database
rows,
  512 and 1600 dimensions: ms per query of exact top-100 search alone vs search + re-rank, side by side
  (`benchmarks/rerank_bench.py`, `suite_block`); a database over half the free memory is memory-mapped
  from a temporary file.
- `train_step`: one REMAP train step (forward + backward + Adam; `benchmarks/train_step_bench.py`) at
  384x512, 8 tuples of 3 images, on 1 device and on all devices, float32 and bfloat16; ratio to float32 on
  1 device.

Roofline (`benchmarks/roofline.py`): next to every device time, XLA's cost analysis of the compiled program
(GFLOP, GB accessed) gives a lower bound on the time, max(flops / peak FLOP/s, bytes / peak bytes/s), from
the vendor's peak figures of the device (H100, H200, TPU v5e, v6e) or, on a CPU, peaks measured at the
start of the run (a matmul and an in-place copy; `peaks.json`); the tables show the measured ms, the
bound ms and `of bound` = bound / measured, the fraction of the roofline reached. Rows timed outside XLA
(numpy references, the host's decoding) have no bound.

Every block runs in its own subprocess with a time budget (`--timeout-s` shared out by weight, unused time
passed on to the next blocks; `--budget BLOCK=SECONDS` fixes one): rows are written as they finish, a row
whose predicted time does not fit the rest of the budget is skipped and listed, a block still running at
its budget is killed and keeps its finished rows, and a block that fails is recorded with its error while
the others go on. The parent process never initialises JAX (it would take the accelerator's memory).
Weights are random (speed does not depend on them) except EfficientNet-Lite0's, read from its installed
package when present; nothing is downloaded and nothing is asked.

Output in --out: `suite.json` (device, peaks, settings, per block: status, seconds, budget, rows, skipped
rows, error) and `suite.md` (the same as Markdown tables); `blocks/NAME.jsonl` hold each block's raw rows as
they were written and `blocks/NAME.log` its output (tracebacks of failed rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
for _path in (ROOT, BENCH):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import rerank_bench  # noqa: E402  (numpy only at import; the block imports JAX in its worker)
from bench_report import json_default  # noqa: E402
from suite_blocks_model import block_extract, block_input, block_roi_pool, block_train_step  # noqa: E402
from suite_blocks_search import block_exact_search, block_ranking  # noqa: E402
from suite_presets import preset  # noqa: E402
from suite_report import markdown  # noqa: E402
from suite_rows import RowWriter, device_info, read_block  # noqa: E402

# Cheap blocks first: what they leave of their budgets goes to the two that can use any amount of time.
BLOCKS = ("roi_pool", "exact_search", "ranking", "rerank", "input", "extract", "train_step")
# Shares of the time budget (what is left when a block starts is shared by the weights of the blocks left).
WEIGHTS = {"roi_pool": 0.10, "extract": 0.30, "train_step": 0.23, "exact_search": 0.10, "ranking": 0.10,
           "rerank": 0.08, "input": 0.09}
DEFAULT_TIMEOUT = {"full": 480, "quick": 600, "tiny": 50}


BLOCK_FUNCTIONS = {"roi_pool": block_roi_pool, "extract": block_extract, "train_step": block_train_step,
                   "exact_search": block_exact_search, "ranking": block_ranking,
                   "rerank": rerank_bench.suite_block, "input": block_input}


def run_worker(args) -> None:
    """`--worker BLOCK`: runs one block in this process, rows into `{out}/blocks/{BLOCK}.jsonl`."""
    os.makedirs(os.path.join(args.out, "blocks"), exist_ok=True)
    path = os.path.join(args.out, "blocks", f"{args.worker}.jsonl")
    import jax
    import roofline

    out = RowWriter(path, args.deadline)
    out.write({"device": device_info()})
    # measured once per run on a CPU (the first block), then read by the others; small for the tiny preset
    sizes = {"matmul": 512, "copy_mb": 32, "repeats": 3} if args.preset == "tiny" else {}
    peaks = roofline.device_peaks(jax.devices()[0], cache=os.path.join(args.out, "peaks.json"), **sizes)
    out.write({"peaks": peaks})
    cfg = preset(args.preset, jax.default_backend() == "cpu")[args.worker]
    out.write({"config": cfg})
    BLOCK_FUNCTIONS[args.worker](cfg, out, peaks)
    out.write({"done": True})


# ------------------------------------------------------------------------------------ the orchestrator

def run_block(name: str, args, budget: float) -> dict:
    """Runs block `name` in a subprocess limited to `budget` seconds; returns its JSON entry."""
    path = os.path.join(args.out, "blocks", f"{name}.jsonl")
    if os.path.exists(path):
        os.remove(path)
    start = time.time()
    # the worker stops starting rows a little before the hard limit, leaving time to exit cleanly
    deadline = start + budget - min(10.0, 0.1 * budget)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--out", args.out,
           "--preset", args.preset_name, "--deadline", str(deadline)]
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    status, error = "ok", None
    log_path = os.path.join(args.out, "blocks", f"{name}.log")
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=budget, stdout=log,
                                  stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                status, error = "error", f"exit code {proc.returncode}"
        except subprocess.TimeoutExpired:
            status, error = "timeout", f"killed at its budget of {budget:.0f} s"
    if status == "error":
        with open(log_path, errors="replace") as f:
            tail = [line.strip() for line in f.read().strip().splitlines()[-6:]]
        error += ": " + " | ".join(tail)[-800:]
    block = read_block(path)
    if status == "ok" and any("error" in r for r in block["rows"]):
        status = "partial"
    if status == "ok" and block["skipped"]:
        status = "ok (budget skipped some rows)"
    return {"status": status, "seconds": round(time.time() - start, 1), "budget_s": round(budget, 1),
            "error": error, "config": block["config"], "rows": block["rows"], "skipped": block["skipped"],
            "device": block.get("device"), "peaks": block.get("peaks")}


def budgets_left(blocks, left: float, fixed: dict[str, float]) -> float:
    """Seconds for blocks[0]: a fixed budget if given, else its weight's share of what the others leave."""
    name = blocks[0]
    if name in fixed:
        return fixed[name]
    flexible = [b for b in blocks if b not in fixed]
    reserved = sum(fixed[b] for b in blocks if b in fixed)
    share = WEIGHTS[name] / sum(WEIGHTS[b] for b in flexible)
    return max(8.0, (left - reserved) * share)


def parse_budgets(items) -> dict[str, float]:
    out = {}
    for item in items or ():
        name, _, seconds = item.partition("=")
        if name not in BLOCKS or not seconds.replace(".", "", 1).isdigit():
            raise SystemExit(f"--budget: expected BLOCK=SECONDS with BLOCK one of {', '.join(BLOCKS)}, got "
                             f"{item!r}")
        out[name] = float(seconds)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for suite.json, suite.md and blocks/")
    p.add_argument("--quick", action="store_true", help="sizes for a 2-core CPU (within 10 minutes)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes: checks the machinery in seconds (tests)")
    p.add_argument("--timeout-s", type=float, help="total budget in seconds (default 480; --quick 600; "
                   "--tiny 50), shared by the blocks")
    p.add_argument("--budget", action="append", metavar="BLOCK=SECONDS", help="fixed budget of one block")
    p.add_argument("--blocks", default=",".join(BLOCKS), help=f"comma separated, some of {','.join(BLOCKS)}")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.preset_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    if args.timeout_s is None:
        args.timeout_s = DEFAULT_TIMEOUT[args.preset_name]
    unknown = [b for b in args.blocks.split(",") if b not in BLOCKS]
    if unknown:
        p.error(f"--blocks: unknown block(s) {unknown}; expected some of {', '.join(BLOCKS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return None
    start = time.time()
    os.makedirs(os.path.join(args.out, "blocks"), exist_ok=True)
    peaks_file = os.path.join(args.out, "peaks.json")  # a CPU's peaks are measured anew by each run
    if os.path.exists(peaks_file):
        os.remove(peaks_file)
    fixed = parse_budgets(args.budget)
    report = {"device": {}, "peaks": None, "preset": args.preset_name, "timeout_s": args.timeout_s,
              "command": " ".join(sys.argv), "blocks": {}}
    todo = args.blocks.split(",")
    while todo:
        left = args.timeout_s - (time.time() - start)
        budget = min(budgets_left(todo, left, fixed), max(left, 5.0))
        name = todo.pop(0)
        print(f"[suite] {name}: budget {budget:.0f} s", flush=True)
        report["blocks"][name] = block = run_block(name, args, budget)
        device, peaks = block.pop("device", None), block.pop("peaks", None)
        if peaks and not report.get("peaks"):
            report["peaks"] = peaks
        if device and not report["device"]:  # every block reports it; the first one is printed
            report["device"] = device
            print(f"[suite] device: {device['device_kind']} x {device['device_count']} "
                  f"({device['backend']}), jax {device['jax']}; jax.devices(): {device['devices']}",
                  flush=True)
        print(f"[suite] {name}: {block['status']} in {block['seconds']:.0f} s, {len(block['rows'])} rows"
              + (f", {len(block['skipped'])} skipped" if block["skipped"] else "")
              + (f" ({block['error']})" if block["error"] else ""), flush=True)
    report["total_s"] = time.time() - start
    with open(os.path.join(args.out, "suite.json"), "w") as f:
        json.dump(report, f, indent=1, default=json_default)
    text = markdown(report)
    with open(os.path.join(args.out, "suite.md"), "w") as f:
        f.write(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
