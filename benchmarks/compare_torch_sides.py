"""The two sides of `benchmarks/compare_torch.py` and their threads: `JaxSide` (remap-jax in this process),
`TorchWorker` (torchvision in another virtualenv, `benchmarks/_torch_worker.py`), and the CPU pinning and
environment variables that give both the same threads."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _line_protocol import LineWorker

from remap_jax.runtime import host_memory

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_torch_worker.py")


def pin_threads(threads: int) -> list[int]:
    """Restricts this process (and its children) to `threads` CPUs; returns them. Call before JAX starts."""
    if not hasattr(os, "sched_setaffinity"):
        return list(range(os.cpu_count() or 1))
    cpus = sorted(os.sched_getaffinity(0))
    if threads > len(cpus):
        raise ValueError(f"--threads: {threads} threads asked, this process may use {len(cpus)} CPUs")
    os.sched_setaffinity(0, cpus[:threads])
    return cpus[:threads]


def thread_env(threads: int, extra_xla_flags: str = "", jax_cpu_devices: int = 1) -> dict[str, str]:
    """Environment variables that pin both sides' thread counts (XLA_FLAGS for jax, OMP/MKL for torch);
    `jax_cpu_devices` > 1 gives the jax side that many CPU devices (XLA:CPU runs a device on one thread;
    the batch is then split over them, as remap-jax's commands do with one device per core)."""
    drop = ("xla_cpu_multi_thread_eigen", "xla_force_host_platform_device_count")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not any(d in f for d in drop)]
    if threads == 1:
        flags.append("--xla_cpu_multi_thread_eigen=false")
    if jax_cpu_devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={jax_cpu_devices}")
    flags += extra_xla_flags.split()
    return {"XLA_FLAGS": " ".join(flags), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def worker_env(args) -> dict[str, str]:
    """What the torch worker's environment adds to this one: its thread counts, and with
    `--retain-memory both` the malloc settings as the variables glibc reads at start-up (variables already
    in this environment reach the worker as they are, whatever the choice)."""
    env = thread_env(args.threads)
    if args.retain_memory == "both":
        env.update(host_memory.environment())
    return env


class JaxSide:
    """remap-jax: `Extractor.from_pretrained` with an R-MAC head on layer4; the model's jitted apply."""

    def __init__(self, arch: str, weights: str, size, levels: int, include_global: bool, dtype: str,
                 fold_bn: bool = True):
        import jax

        from remap_jax.describe.extractor import Extractor

        self.jax = jax
        self.extractor = Extractor.from_pretrained(
            arch, weights, taps=("layer4",), head="rmac", levels=levels, include_global=include_global,
            dtype=dtype, fold_bn=fold_bn, image_size=size, batch_size=1,
        )
        self.extractors = {}  # batch size -> Extractor (its devices: all when they divide the batch)
        self.images = None

    def load(self, images: np.ndarray, warmup: int) -> list[float]:
        from remap_jax.describe.extractor import Extractor

        batch = images.shape[0]
        if batch not in self.extractors:  # split the batch over the devices when it divides (one per core)
            base = self.extractor
            self.extractors[batch] = Extractor(base.model, base.variables, image_size=base.image_size,
                                               batch_size=batch)
        self.current = self.extractors[batch]
        self.host_images = images
        self.images = self.jax.device_put(images, self.current._batch_sharding)
        return [self.time_once() for _ in range(max(1, warmup))]

    def describe(self) -> np.ndarray:
        return np.asarray(self.current.describe_batch(self.images))

    def time_once(self) -> float:
        t0 = time.perf_counter()
        self.describe()
        return time.perf_counter() - t0

    def breakdown(self, repeats: int) -> dict[str, float]:
        """Median seconds per batch of each part: host->device copy, normalisation, backbone (normalised
        input), head (on the layer4 map), and the whole call; plus the backbone's FLOPs (XLA's cost
        analysis) and the rate it ran at (`backbone_gflops_per_s`). The parts are compiled with the
        extractor's compiler options (`remap_jax.runtime.xla`)."""
        from remap_jax.model import RetrievalModel
        from remap_jax.runtime import xla

        jax, ex = self.jax, self.current
        model, variables = ex.model, ex.variables
        normalise = xla.jit(lambda x: model.apply(variables, x, method=RetrievalModel.normalize))
        backbone = xla.jit(lambda v, x: model.backbone.apply(
            {"params": v["params"]["backbone"], "batch_stats": v["batch_stats"]["backbone"]}, x,
            taps=tuple(model.taps)))
        head = xla.jit(lambda p, m: model.head.apply({"params": p},
                                                    {k: v.astype("float32") for k, v in m.items()}))
        normalised = jax.block_until_ready(normalise(self.images))
        maps = jax.block_until_ready(backbone(variables, normalised))
        head_params = variables["params"]["head"]
        parts = {
            "transfer": lambda: jax.device_put(self.host_images),
            "normalise": lambda: normalise(self.images),
            "backbone": lambda: backbone(variables, normalised),
            "head": lambda: head(head_params, maps),
            "whole": lambda: ex.describe_batch(self.images),
        }
        out = {}
        for name, fn in parts.items():
            jax.block_until_ready(fn())
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                times.append(time.perf_counter() - t0)
            out[name] = float(np.median(times))
        cost = backbone.lower(variables, normalised).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and cost.get("flops"):
            out["backbone_gflop"] = float(cost["flops"]) / 1e9
            out["backbone_gflops_per_s"] = out["backbone_gflop"] / out["backbone"]
        return out


class TorchWorker(LineWorker):
    """The torch side: `_torch_worker.py` in the torch virtualenv, driven over stdin/stdout JSON lines."""

    def __init__(self, python: str, args: argparse.Namespace, weights: str, env: dict[str, str]):
        cmd = [python, WORKER, "--arch", args.arch, "--weights", weights, "--threads", str(args.threads),
               "--device", args.device, "--dtype", args.dtype, "--levels", str(args.levels)]
        if args.include_global:
            cmd.append("--include-global")
        if args.torch_channels_last:
            cmd.append("--channels-last")
        super().__init__(cmd, {**os.environ, **env}, name="torch worker")
