"""The benchmark suite's blocks that run a network (`roi_pool`, `extract`, `input`, `train_step`): each writes
its rows through a `suite_rows.RowWriter`, with the roofline of every device time (see
`benchmarks/suite.py` for what each block measures). JAX is imported inside the functions: the suite's
parent process imports this module and must not start JAX."""

from __future__ import annotations

import functools
import os
import time

from suite_rows import RowWriter


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
def suite_extractor(arch: str, dtype: str, size: tuple[int, int]):
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

    extractor, weights = suite_extractor(arch, dtype, size)
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
    import roofline

    arch, dtype, batch, size = cfg["arch"], cfg["dtype"], cfg["batch"], tuple(cfg["size"])
    extractor, _ = suite_extractor(arch, dtype, size)
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
                    return {**row, **roofline.fields(None, None, "float32", row["s_per_batch"])}

                host_rows.append(out.timed(f"{label}/{workers}/{draft}", config, measure))
    device = out.timed("device", {"part": "device", "arch": arch, "dtype": dtype, "batch": batch,
                                  "size": f"{size[0]}x{size[1]}"},
                       lambda: measure_device(extractor, dtype, batch, size, cfg["repeats"], peaks))
    if device and device.get("images_per_s"):
        for row in host_rows:
            if row and "images_per_s" in row:
                out.write({"row": {**row, "vs_device": row["images_per_s"] / device["images_per_s"]}})


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
