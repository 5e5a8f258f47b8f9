r"""The accelerator benchmark suite: one command, one JSON and one Markdown table of every speed figure.

    python benchmarks/suite.py --out suite_out                   # accelerator (GPU/TPU): about 8 minutes
    python benchmarks/suite.py --out suite_out --quick           # the 2-core CPU: within 10 minutes
    python benchmarks/suite.py --out /tmp/s --quick --tiny       # structure check (tests): seconds
    python benchmarks/suite.py --out suite_out --timeout-s 300 --blocks extract,roi_pool --budget extract=200

Blocks, in the order they run, each with its ratio to a baseline measured in the same process (sizes
below are the accelerator's; `--quick` shrinks them, see `preset`):

- `roi_pool`: `roi_max_pool` (both lowerings, `slices` and `gather`) on stage-4 and stage-5 ResNet maps at
  1024x768 (batch 32; 8 on a CPU), float32 and bfloat16, vs the classic loop of slices (`naive`) and the
  full-map max (the floor); `benchmarks/roi_pool_bench.py` (`run`), which checks the results equal the loop's.
- `exact_search`: `remap_jax.search.index.exact_search` top-100 of 1000 queries in 1M x 512 unit vectors vs a
numpy
  brute force (chunked matmul + argpartition, `benchmarks/eval_bench.py`); equal results checked.
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
import functools
import json
import os
import platform
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
for _path in (ROOT, BENCH):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import rerank_bench  # noqa: E402  (numpy only at import; the block imports JAX in its worker)

# Cheap blocks first: what they leave of their budgets goes to the two that can use any amount of time.
BLOCKS = ("roi_pool", "exact_search", "ranking", "rerank", "input", "extract", "train_step")
# Shares of the time budget (what is left when a block starts is shared by the weights of the blocks left).
WEIGHTS = {"roi_pool": 0.10, "extract": 0.30, "train_step": 0.23, "exact_search": 0.10, "ranking": 0.10,
           "rerank": 0.08, "input": 0.09}
LITES = tuple(f"efficientnet_lite{i}" for i in range(5))
DEFAULT_TIMEOUT = {"full": 480, "quick": 600, "tiny": 50}


# ------------------------------------------------------------------------------------------------ presets

def preset(name: str, on_cpu: bool) -> dict:
    """The sizes of every block for preset `name` ("full", "quick" or "tiny")."""
    if name == "tiny":
        return {
            "roi_pool": {"shapes": [("stage5 tiny", (2, 6, 8, 16))], "dtypes": ["float32", "bfloat16"],
                         "methods": ["slices", "gather"], "levels": 2, "repeats": 1},
            "extract": {"pairs": [("resnet18", 1)], "dtypes": ["float32", "bfloat16"], "size": (32, 64),
                        "repeats": 1},
            "train_step": {"archs": ["resnet18"], "size": (32, 32), "tuples": 8, "negatives": 1,
                           "dtypes": ["float32"], "repeats": 1},
            "exact_search": {"n": 4096, "dim": 32, "queries": 16, "k": 10},
            "ranking": {"n": 4096, "dim": 32, "queries": 8},
            "rerank": rerank_bench.SUITE_PRESETS["tiny"],
            "input": {"arch": "resnet18", "dtype": "float32", "batch": 4, "size": (32, 64), "images": 8,
                      "photos": 2, "sources": [("64x32", (32, 64)), ("256x128", (128, 256))], "repeats": 1},
        }
    if name == "quick":  # a 2-core CPU within 10 minutes
        return {
            "roi_pool": {"shapes": [("stage5 @1024x768", (8, 24, 32, 2048)),
                                    ("stage4 @1024x768", (8, 48, 64, 1024))],
                         "dtypes": ["float32", "bfloat16"], "methods": ["slices", "gather"], "levels": 4,
                         "repeats": 3},
            "extract": {"pairs": [("resnet50", 1), ("efficientnet_lite0", 1), ("resnet101", 1)],
                        "dtypes": ["float32", "bfloat16"], "size": (768, 1024), "repeats": 2},
            "train_step": {"archs": ["resnet50"], "size": (128, 160), "tuples": 8, "negatives": 1,
                           "dtypes": ["float32", "bfloat16"], "repeats": 2},
            "exact_search": {"n": 200_000, "dim": 512, "queries": 200, "k": 100},
            "ranking": {"n": 200_000, "dim": 512, "queries": 70},
            "rerank": rerank_bench.SUITE_PRESETS["quick"],
            "input": {"arch": "efficientnet_lite0", "dtype": "float32", "batch": 4, "size": (768, 1024),
                      "images": 8, "photos": 4, "repeats": 1,
                      "sources": [("1024x768", (768, 1024)), ("12 MP 4032x3024", (3024, 4032))]},
        }
    batch = 8 if on_cpu else 32
    return {
        "roi_pool": {"shapes": [("stage5 @1024x768", (batch, 24, 32, 2048)),
                                ("stage4 @1024x768", (batch, 48, 64, 1024))],
                     "dtypes": ["float32", "bfloat16"], "levels": 4, "repeats": 20,
                     # the lowering `method="auto"` takes on this backend first
                     "methods": ["slices", "gather"] if on_cpu else ["gather", "slices"]},
        # (arch, batch) in priority order: ResNets at every batch size, the Lite family at 32, then at 1, 8
        "extract": {"pairs": [(a, b) for a in ("resnet50", "resnet101") for b in (1, 8, 32)]
                    + [(lite, b) for b in (32, 1, 8) for lite in LITES],
                    "dtypes": ["float32", "bfloat16"], "size": (768, 1024), "repeats": 10},
        "train_step": {"archs": ["resnet50", "resnet101"], "size": (384, 512), "tuples": 8, "negatives": 1,
                       "dtypes": ["float32", "bfloat16"], "repeats": 5},
        "exact_search": {"n": 1_000_000, "dim": 512, "queries": 1000, "k": 100},
        "ranking": {"n": 1_000_000, "dim": 512, "queries": 70},
        "rerank": rerank_bench.SUITE_PRESETS["full"],
        # the question: can 16 host cores feed ResNet-101 in bfloat16 at 1024x768 on an H100?
        "input": {"arch": "resnet101", "dtype": "bfloat16", "batch": batch, "size": (768, 1024),
                  "images": 3 * batch, "photos": 8, "repeats": 1,
                  "sources": [("1024x768", (768, 1024)), ("12 MP 4032x3024", (3024, 4032))]},
    }


# ------------------------------------------------------------------------------------- the block workers

class RowWriter:
    """Appends a block's rows (and skipped configurations) as JSON lines, flushed one by one, and decides
    whether the next row fits the block's deadline: a row is predicted to take as long as the slowest row
    of the same `kind` so far, a row of a new kind as long as the mean row so far (the block's first row
    always runs; the parent's hard limit still stops it)."""

    def __init__(self, path: str, deadline: float):
        self.file = open(path, "a", buffering=1)
        self.deadline = deadline
        self.cost: dict[str, float] = {}

    def fits(self, kind: str, config: dict) -> bool:
        left = self.deadline - time.time()
        costs = list(self.cost.values())
        predicted = self.cost.get(kind, sum(costs) / len(costs) if costs else 0.0)
        if predicted > left:
            reason = f"predicted {predicted:.0f} s > {max(left, 0):.0f} s left"
            self.write({"skipped": config, "reason": reason})
            return False
        return True

    def timed(self, kind: str, config: dict, fn) -> dict | None:
        """Runs `fn() -> row` (a dict) if it fits; a failing row is written with its error. Returns it."""
        if not self.fits(kind, config):
            return None
        t0 = time.time()
        try:
            row = {**config, **fn()}
        except Exception as e:  # one configuration failing must not stop the others
            row = {**config, "error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        self.cost[kind] = max(self.cost.get(kind, 0.0), time.time() - t0)
        row["row_s"] = round(time.time() - t0, 1)
        self.write({"row": row})
        return row

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, default=_json_default) + "\n")
        print(json.dumps(record, default=_json_default), file=sys.stderr, flush=True)


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def device_info() -> dict:
    import jax

    devices = jax.devices()
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "host_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def block_roi_pool(cfg: dict, out: RowWriter, peaks: dict | None) -> None:
    import jax
    import roi_pool_bench
    import roofline

    from remap_jax.nn.regions import rmac_regions
    from remap_jax.nn.roi_pool import roi_max_pool

    # priority: a lowering on every shape and dtype before the next lowering
    for method in cfg["methods"]:
        for dtype in cfg["dtypes"]:
            for label, shape in cfg["shapes"]:
                config = {"shape": label, "BxHxWxC": "x".join(map(str, shape)), "dtype": dtype,
                          "method": method}

                def measure(shape=shape, dtype=dtype, method=method, label=label):
                    rows, _ = roi_pool_bench.run([(label, shape)], [dtype], levels=cfg["levels"],
                                                 repeats=cfg["repeats"], method=method)
                    row = {k: v for k, v in rows[0].items() if k not in ("shape", "BxHxWxC", "dtype")}
                    regions = rmac_regions(shape[1], shape[2], cfg["levels"])  # what roi_pool_bench pools
                    program = jax.jit(lambda v: roi_max_pool(v, regions, method))
                    cost = roofline.cost(program, jax.ShapeDtypeStruct(shape, dtype))
                    return {**row, **roofline.fields(cost, peaks, dtype, row["roi_max_pool_ms"] / 1e3)}

                out.timed(f"{label}", config, measure)


def _time_calls(fn, args, repeats: int) -> tuple[float, float]:
    """(seconds of the first call: compile + run, median seconds of `repeats` further calls)."""
    import jax
    import numpy as np

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


@functools.lru_cache(maxsize=2)  # both dtypes of the arch being measured
def _extractor(arch: str, dtype: str, size: tuple[int, int]):
    """(`Extractor.from_pretrained` with the REMAP head on the default taps, weights path or None): random
    weights, except Lite0's from its installed package when present."""
    import decode_bench

    return decode_bench.benchmark_extractor(arch, head="remap", dtype=dtype, image_size=size)


def _device_pixels(batch: int, size):
    import jax
    import numpy as np

    return jax.device_put(np.random.default_rng(0).integers(0, 256, (batch, *size, 3), dtype=np.uint8))


def measure_device(extractor, dtype: str, batch: int, size, repeats: int, peaks: dict | None) -> dict:
    """images/s of `extractor.describe_batch` on a uint8 batch already on the device, with its roofline."""
    import roofline

    images = _device_pixels(batch, size)
    first, seconds = _time_calls(extractor.describe_batch, (images,), repeats)
    cost = roofline.cost(extractor.lower_batch(images))
    return {"images_per_s": batch / seconds, "s_per_batch": seconds, "first_call_s": first,
            **roofline.fields(cost, peaks, dtype, seconds)}


def measure_extraction(arch: str, dtype: str, batch: int, size, repeats: int,
                       peaks: dict | None = None) -> dict:
    """images/s of the jitted descriptor on a uint8 batch already on the device, its roofline, and the
    head's share."""
    from remap_jax.model import RetrievalModel
    from remap_jax.runtime import xla

    extractor, weights = _extractor(arch, dtype, size)
    model, variables = extractor.model, extractor.variables
    row = measure_device(extractor, dtype, batch, size, repeats, peaks)
    images = _device_pixels(batch, size)
    maps = xla.jit(lambda v, x: model.apply(v, x, method=RetrievalModel.features))(variables, images)
    head = xla.jit(lambda p, m: model.head.apply({"params": p}, m))
    _, head_s = _time_calls(head, (variables["params"]["head"], maps), repeats)
    return {**row, "head_share": head_s / row["s_per_batch"], "weights": "installed" if weights else "random"}


def block_extract(cfg: dict, out: RowWriter, peaks: dict | None) -> None:
    size = tuple(cfg["size"])
    base: dict[tuple, float] = {}  # (arch, batch) -> float32 images/s

    def measure(arch, dtype, batch):
        row = measure_extraction(arch, dtype, batch, size, cfg["repeats"], peaks)
        if dtype == "float32":
            base[arch, batch] = row["images_per_s"]
        if (arch, batch) in base:
            row["vs_float32"] = row["images_per_s"] / base[arch, batch]
        return row

    for arch, batch in cfg["pairs"]:
        for dtype in cfg["dtypes"]:
            config = {"arch": arch, "dtype": dtype, "batch": batch, "size": f"{size[0]}x{size[1]}"}
            out.timed(f"{arch}/{batch}", config, lambda a=arch, d=dtype, b=batch: measure(a, d, b))


def measure_host(extractor, paths: list[str], batch: int, workers: int, draft: bool, repeats: int) -> dict:
    """images/s the host side delivers: `extractor`'s input pipeline (`Extractor.input_batches`: read, decode,
    resize, batch, copy to the device) with `workers` decoding threads, every batch waited for on the
    device; nothing is described. Best of `repeats` passes."""
    import jax

    from remap_jax.describe.extractor import Extractor
    from remap_jax.describe.pipeline import Failed

    pipeline = Extractor(extractor.model, extractor.variables, image_size=extractor.image_size,
                         batch_size=batch, workers=workers, draft=draft)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in pipeline.input_batches(paths):
            if isinstance(item, Failed):
                raise ValueError(f"input {paths[item.index]}: {item.reason}")
            jax.block_until_ready(item[2])
        best = min(best, time.perf_counter() - t0)
    return {"images_per_s": len(paths) / best, "s_per_batch": best * batch / len(paths)}


def block_input(cfg: dict, out: RowWriter, peaks: dict | None) -> None:
    """Host rows first (no compilation: they finish even when the device row's compile runs out of time),
    then the device row; the host rows are then written again with `vs_device` (the last record wins)."""
    import tempfile

    import decode_bench

    arch, dtype, batch, size = cfg["arch"], cfg["dtype"], cfg["batch"], tuple(cfg["size"])
    extractor, _ = _extractor(arch, dtype, size)
    photos = decode_bench.photos(cfg["photos"])
    cores = os.cpu_count() or 1
    host_rows = []
    with tempfile.TemporaryDirectory(prefix="remap_suite_input_") as folder:
        for label, source in cfg["sources"]:
            files = decode_bench.write_jpegs(folder, photos, tuple(source))
            paths = [files[i % len(files)] for i in range(cfg["images"])]
            large = min(source[0] / size[0], source[1] / size[1]) >= 2
            # the draft-free pipeline on large photos: what draft decoding buys, with every core
            settings = [(1, True), (cores, True)] + ([(cores, False)] if large else [])
            for workers, draft in settings:
                config = {"part": "host", "arch": arch, "batch": batch, "size": f"{size[0]}x{size[1]}",
                          "source": label, "workers": workers, "draft": draft}

                def measure(paths=paths, workers=workers, draft=draft):
                    row = measure_host(extractor, paths, batch, workers, draft, cfg["repeats"])
                    return {**row, **roofline_none(row["s_per_batch"])}

                host_rows.append(out.timed(f"{label}/{workers}/{draft}", config, measure))
    device = out.timed("device", {"part": "device", "arch": arch, "dtype": dtype, "batch": batch,
                                  "size": f"{size[0]}x{size[1]}"},
                       lambda: measure_device(extractor, dtype, batch, size, cfg["repeats"], peaks))
    if device and device.get("images_per_s"):
        for row in host_rows:
            if row and "images_per_s" in row:
                out.write({"row": {**row, "vs_device": row["images_per_s"] / device["images_per_s"]}})


def roofline_none(measured_s: float) -> dict:
    """The roofline fields of a time spent outside XLA (no program to bound)."""
    import roofline

    return roofline.fields(None, None, "float32", measured_s)


def block_train_step(cfg: dict, out: RowWriter, peaks: dict | None) -> None:
    import jax
    import roofline
    import train_step_bench

    from train import step as train_step

    counts = [1] + ([jax.device_count()] if jax.device_count() > 1 else [])
    base: dict[str, float] = {}  # arch -> float32 images/s on 1 device

    def measure(arch, dtype, n):
        mesh = train_step.make_mesh(jax.devices()[:n])
        row = train_step_bench.time_train_step(arch, tuple(cfg["size"]), cfg["tuples"], cfg["negatives"],
                                               dtype, cfg["repeats"], mesh=mesh, with_cost=True)
        cost = row.pop("cost")  # one device's share of the SPMD step: bounds the time of each device
        row = {k: v for k, v in row.items() if k not in ("arch", "dtype", "devices")}
        row.update(roofline.fields(cost, peaks, dtype, row["ms_per_step"] / 1e3))
        if n == 1 and dtype == "float32":
            base[arch] = row["images_per_s"]
        if arch in base:
            row["vs_float32_1_device"] = row["images_per_s"] / base[arch]
        return row

    for arch in cfg["archs"]:
        for n in counts:
            for dtype in cfg["dtypes"]:
                config = {"arch": arch, "dtype": dtype, "devices": n}
                out.timed(f"{arch}/{n}", config, lambda a=arch, d=dtype, n=n: measure(a, d, n))


def _unit_rows(n: int, dim: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):
        x = rng.standard_normal((min(65536, n - s), dim), dtype=np.float32)
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def similarity_top_k_cost(num_queries: int, num_db: int, dim: int, k: int | None) -> dict:
    """XLA's cost of the search's math as one program: float32 scores queries @ database.T, then the top k
    per query (k None: the scores only, a deep ranking sorts them on the host). Its bound bounds the
    streamed search too: every database row must be read and scored."""
    import jax
    import jax.numpy as jnp
    import roofline

    def search(q, db):
        scores = q @ db.T
        return scores if k is None else jax.lax.top_k(scores, k)

    return roofline.cost(jax.jit(search), jax.ShapeDtypeStruct((num_queries, dim), jnp.float32),
                         jax.ShapeDtypeStruct((num_db, dim), jnp.float32))


def block_exact_search(cfg: dict, out: RowWriter, peaks: dict | None) -> None:
    import eval_bench
    import numpy as np
    import roofline

    from remap_jax.search.index import exact_search

    n, dim, nq, k = cfg["n"], cfg["dim"], cfg["queries"], cfg["k"]
    db, queries = _unit_rows(n, dim, 0), _unit_rows(nq, dim, 1)
    config = {"num_db": n, "dim": dim, "queries": nq, "k": k}

    def measure():
        exact_search(db[: min(n, 65536)], queries, k)  # compiles the step for these query batches
        t0 = time.perf_counter()
        positions, _ = exact_search(db, queries, k)
        jax_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        reference = eval_bench.numpy_rank_database(queries, db, k=k).T  # (k, Q) -> (Q, k)
        numpy_s = time.perf_counter() - t0
        overlap = [len(np.intersect1d(a, b)) for a, b in zip(positions, reference, strict=True)]
        return {"jax_s": jax_s, "numpy_s": numpy_s, "queries_per_s": nq / jax_s, "speedup": numpy_s / jax_s,
                "identical_fraction": float(np.mean(np.all(positions == reference, axis=1))),
                "recall": float(np.mean(overlap)) / k,
                **roofline.fields(similarity_top_k_cost(nq, n, dim, k), peaks, "float32", jax_s)}

    out.timed("exact", config, measure)


def block_ranking(cfg: dict, out: RowWriter, peaks: dict | None) -> None:
    import eval_bench
    import roofline

    n, dim, nq = cfg["n"], cfg["dim"], cfg["queries"]
    config = {"num_db": n, "dim": dim, "queries": nq}

    def ranking():
        (row,) = eval_bench.bench_ranking([n], num_queries=nq, dim=dim, top=100, repeat=1)
        row["top_speedup"] = row["numpy_top100_s"] / row["jax_top100_s"]
        # the roofline of the top-100 figure; the full ranking's fraction next to it (scores only: the
        # sort runs on the host)
        full = roofline.fields(similarity_top_k_cost(nq, n, dim, None), peaks, "float32", row["jax_full_s"])
        row.update(roofline.fields(similarity_top_k_cost(nq, n, dim, 100), peaks, "float32",
                                   row["jax_top100_s"]))
        row["full_of_bound"] = full["of_bound"]
        return {"part": "ranking", **{k: v for k, v in row.items() if k not in config}}

    def scoring():  # numpy: no XLA program to bound
        (row,) = eval_bench.bench_scoring([n], num_queries=nq, repeat=1)
        return {"part": "scoring", **{k: v for k, v in row.items() if k not in config},
                **roofline_none(row["vectorised_s"])}

    out.timed("ranking", {**config, "part": "ranking"}, ranking)
    out.timed("scoring", {**config, "part": "scoring"}, scoring)


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

def read_block(path: str) -> dict:
    """{config, rows, skipped, done} from a block's JSON lines (the last record of a row wins)."""
    result: dict = {"rows": [], "skipped": [], "done": False, "config": None}
    if not os.path.exists(path):
        return result
    keyed: dict[str, dict] = {}
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if "row" in record:
                row = record["row"]
                keyed[json.dumps({k: row[k] for k in row if k in _KEY_FIELDS}, sort_keys=True)] = row
            elif "skipped" in record:
                result["skipped"].append({**record["skipped"], "reason": record["reason"]})
            elif "config" in record:
                result["config"] = record["config"]
            elif record.get("done"):
                result["done"] = True
            elif "device" in record:
                result["device"] = record["device"]
            elif "peaks" in record:
                result["peaks"] = record["peaks"]
    result["rows"] = list(keyed.values())
    return result


_KEY_FIELDS = ("shape", "BxHxWxC", "method", "arch", "dtype", "batch", "size", "devices", "num_db", "part",
               "k", "dim", "source", "workers", "draft")


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


# -------------------------------------------------------------------------------------------- Markdown

ROOFLINE_COLUMNS = [("measured_ms", "measured ms", "{:.3f}"), ("bound_ms", "bound ms", "{:.3f}"),
                    ("of_bound", "of bound", "{:.1%}"), ("gflop", "GFLOP", "{:.3g}"),
                    ("gbytes", "GB", "{:.3g}")]

COLUMNS = {
    "roi_pool": [("shape", "shape", "{}"), ("BxHxWxC", "B x H x W x C", "{}"), ("dtype", "dtype", "{}"),
                 ("method", "lowering", "{}"), ("R", "R", "{}"),
                 ("roi_max_pool_ms", "roi_max_pool ms", "{:.3f}"),
                 ("naive_ms", "naive loop ms", "{:.3f}"), ("full_max_ms", "full-map max ms", "{:.3f}"),
                 ("speedup_vs_naive", "vs naive", "{:.1f}x"), ("ratio_to_floor", "x floor", "{:.2f}x"),
                 ("roi_GBps", "GB/s", "{:.1f}")] + ROOFLINE_COLUMNS,
    "extract": [("arch", "arch", "{}"), ("dtype", "dtype", "{}"), ("batch", "batch", "{}"),
                ("size", "H x W", "{}"), ("images_per_s", "images/s", "{:.2f}"),
                ("s_per_batch", "s/batch", "{:.4f}"), ("head_share", "head share", "{:.1%}"),
                ("vs_float32", "vs float32", "{:.2f}x"), ("first_call_s", "first call s", "{:.1f}"),
                ("weights", "weights", "{}")] + ROOFLINE_COLUMNS,
    "input": [("part", "part", "{}"), ("arch", "arch", "{}"), ("dtype", "dtype", "{}"),
              ("batch", "batch", "{}"), ("size", "H x W", "{}"), ("source", "source JPEGs", "{}"),
              ("workers", "threads", "{}"), ("draft", "draft", "{}"), ("images_per_s", "images/s", "{:.1f}"),
              ("vs_device", "vs device", "{:.2f}x")] + ROOFLINE_COLUMNS,
    "train_step": [("arch", "arch", "{}"), ("size", "H x W", "{}"), ("tuples", "tuples", "{}"),
                   ("images", "images", "{}"), ("dtype", "dtype", "{}"), ("devices", "devices", "{}"),
                   ("ms_per_step", "ms/step", "{:.1f}"), ("images_per_s", "images/s", "{:.1f}"),
                   ("vs_float32_1_device", "vs f32 x1", "{:.2f}x"), ("compile_s", "compile s", "{:.1f}")]
    + ROOFLINE_COLUMNS,
    "exact_search": [("num_db", "database", "{:,}"), ("dim", "D", "{}"), ("queries", "queries", "{}"),
                     ("k", "k", "{}"), ("jax_s", "exact_search s", "{:.3f}"),
                     ("numpy_s", "numpy s", "{:.3f}"),
                     ("queries_per_s", "queries/s", "{:.0f}"), ("speedup", "vs numpy", "{:.1f}x"),
                     ("identical_fraction", "identical order", "{:.3f}"), ("recall", "same top-k", "{:.4f}")]
    + ROOFLINE_COLUMNS,
    "ranking": [("part", "part", "{}"), ("num_db", "database", "{:,}"), ("queries", "queries", "{}"),
                ("jax_full_s", "rank_database full s", "{:.2f}"), ("numpy_full_s", "numpy full s", "{:.2f}"),
                ("full_speedup", "full vs numpy", "{:.1f}x"), ("full_identical", "identical", "{}"),
                ("jax_top100_s", "top-100 s", "{:.3f}"), ("numpy_top100_s", "numpy top-100 s", "{:.3f}"),
                ("top_speedup", "top-100 vs numpy", "{:.1f}x"), ("vectorised_s", "scoring s", "{:.3f}"),
                ("isin_scan_s", "isin scan s", "{:.3f}"), ("speedup", "scoring vs isin", "{:.1f}x"),
                ("full_of_bound", "full of bound", "{:.1%}")] + ROOFLINE_COLUMNS,
    "rerank": rerank_bench.SUITE_COLUMNS + ROOFLINE_COLUMNS,
}


def _cell(row: dict, key: str, fmt: str) -> str:
    if key not in row or row[key] is None:
        return "-"
    try:
        return fmt.format(row[key])
    except (ValueError, TypeError):
        return str(row[key])


def _peaks_line(peaks: dict | None) -> str:
    if not peaks:
        return "none (a device not in benchmarks/roofline.py's table: no bounds)"
    return (f"{peaks['float32_flops'] / 1e12:.3g} TFLOP/s float32, {peaks['bfloat16_flops'] / 1e12:.3g} "
            f"TFLOP/s bfloat16, {peaks['bytes_per_s'] / 1e9:.3g} GB/s ({peaks.get('source', '?')}); "
            "of bound = bound / measured")


def markdown(report: dict) -> str:
    d = report["device"]
    devices = d.get("devices", [])
    load = d.get("load_average") or float("nan")
    lines = [
        "# remap-jax benchmark suite",
        "",
        f"- device: {d.get('device_kind', '?')} x {d.get('device_count', '?')} ({d.get('backend', '?')}), "
        f"jax {d.get('jax', '?')}, {d.get('host_cpus', '?')} host CPUs, load average at start "
        f"{load:.2f}",
        f"- jax.devices(): {', '.join(devices[:8])}" + (" ..." if len(devices) > 8 else ""),
        f"- preset {report['preset']}, total {report['total_s']:.0f} s of a {report['timeout_s']:.0f} s "
        "budget",
        "- roofline peaks: " + _peaks_line(report.get("peaks")),
        "",
        "| block | status | seconds | budget s | rows | skipped |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, block in report["blocks"].items():
        lines.append(f"| {name} | {block['status']} | {block['seconds']:.0f} | {block['budget_s']:.0f} | "
                     f"{len(block['rows'])} | {len(block['skipped'])} |")
    for name, block in report["blocks"].items():
        lines += ["", f"## {name}", ""]
        if block["error"]:
            lines += [f"error: {block['error']}", ""]
        columns = COLUMNS[name]
        if block["rows"]:
            lines.append("| " + " | ".join(h for _, h, _ in columns) + " | error |")
            lines.append("|" + "---|" * (len(columns) + 1))
            for r in block["rows"]:
                cells = [_cell(r, k, f) for k, _, f in columns]
                lines.append("| " + " | ".join(cells) + f" | {r.get('error', '')} |")
        elif not block["error"]:
            lines.append("no rows")
        if block["skipped"]:
            lines += ["", "skipped (budget): " + "; ".join(
                ", ".join(f"{k}={v}" for k, v in s.items() if k != "reason") for s in block["skipped"])]
    return "\n".join(lines) + "\n"


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
        json.dump(report, f, indent=1, default=_json_default)
    text = markdown(report)
    with open(os.path.join(args.out, "suite.md"), "w") as f:
        f.write(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
