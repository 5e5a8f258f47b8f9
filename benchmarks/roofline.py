"""Roofline lower bounds for the benchmark suite: XLA's cost analysis of a compiled program against the
peak FLOP/s and memory bytes/s of the device it ran on.

    cost = roofline.cost(jitted, *args)          # {"flops", "bytes"} of jitted.lower(*args).compile()
    peaks = roofline.device_peaks(jax.devices()[0])      # the vendor table row, or measured on a CPU
    row.update(roofline.fields(cost, peaks, "bfloat16", measured_s))   # bound_ms, of_bound, ...

bound = max(flops / peak FLOP/s, bytes accessed / peak bytes/s): no program with this cost can run faster on
that device. `of_bound` = bound / measured seconds is the fraction of the roofline reached (1 = at the roof;
above 1 only where XLA's byte count overstates the traffic, e.g. data that stays in a cache, or a CPU's
measured peak is below what the program reaches).
"""

from __future__ import annotations

import json
import os
import time

# device_kind substring -> peak figures, dense (no structured sparsity). "f32" is what a float32 matmul runs
# at under JAX's default precision: TF32 tensor cores on H100/H200, one bfloat16 pass on TPU (JAX's
# "Matmul precision" page). Vendor figures:
#   H100 SXM5, H100 PCIe, H100 NVL: NVIDIA H100 Tensor Core GPU datasheet: BF16 1979 / 1513 / 1671 TFLOPS
#     and TF32 989 / 756 / 835 TFLOPS "with sparsity" (dense: half), HBM 3.35 / 2 / 3.9 TB/s.
#   H200 SXM: NVIDIA H200 datasheet: BF16 1979, TF32 989 TFLOPS with sparsity (dense: half), HBM3e 4.8 TB/s.
#   TPU v5e: Google Cloud TPU v5e page: 197 TFLOPS bf16, HBM 819 GB/s.
#   TPU v6e (Trillium): Google Cloud TPU v6e page: 918 TFLOPS bf16, HBM 1640 GB/s.
PEAKS = {
    "H200": {"bfloat16_flops": 989.5e12, "float32_flops": 494.7e12, "bytes_per_s": 4.8e12},
    "H100 PCIe": {"bfloat16_flops": 756.5e12, "float32_flops": 378e12, "bytes_per_s": 2.0e12},
    "H100 NVL": {"bfloat16_flops": 835.5e12, "float32_flops": 417.5e12, "bytes_per_s": 3.9e12},
    "H100": {"bfloat16_flops": 989.5e12, "float32_flops": 494.7e12, "bytes_per_s": 3.35e12},
    "TPU v5 lite": {"bfloat16_flops": 197e12, "float32_flops": 197e12, "bytes_per_s": 819e9},
    "TPU v5e": {"bfloat16_flops": 197e12, "float32_flops": 197e12, "bytes_per_s": 819e9},
    "TPU v6 lite": {"bfloat16_flops": 918e12, "float32_flops": 918e12, "bytes_per_s": 1640e9},
    "TPU v6e": {"bfloat16_flops": 918e12, "float32_flops": 918e12, "bytes_per_s": 1640e9},
}


def table_peaks(device_kind: str) -> dict | None:
    """The PEAKS row whose key occurs in `device_kind` (the longest match: "H100 PCIe" before "H100")."""
    for key in sorted(PEAKS, key=len, reverse=True):
        if key.lower() in device_kind.lower():
            return {**PEAKS[key], "source": f"vendor figures for {key}"}
    return None


def _best_seconds(fn, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn())  # compile and first touch
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def measure_peaks(matmul: int = 1024, copy_mb: int = 128, repeats: int = 5) -> dict:
    """Peaks measured on this machine's default device: FLOP/s of a jitted (matmul x matmul) @ (matmul x
    matmul) product per dtype (2 n^3 flops, best of `repeats`), bytes/s of an elementwise pass over a
    `copy_mb` MiB float32 array in place (read once, written once). What a CPU's roofline is drawn from."""
    import jax
    import jax.numpy as jnp

    out = {"source": f"measured: {matmul}^2 matmul, {copy_mb} MiB copy, best of {repeats}"}
    dot = jax.jit(lambda x: x @ x)
    for dtype in ("float32", "bfloat16"):
        a = jax.random.normal(jax.random.key(0), (matmul, matmul), jnp.float32).astype(dtype)
        out[f"{dtype}_flops"] = 2 * matmul**3 / _best_seconds(lambda a=a: dot(a), repeats)
    # the input buffer is donated and reused: a fresh output buffer each call would time the OS mapping new
    # pages, not the memory
    state = [jnp.zeros((copy_mb << 20) // 4, jnp.float32)]
    step = jax.jit(lambda v: v + 1.0, donate_argnums=0)

    def copy():
        state[0] = step(state[0])
        return state[0]

    out["bytes_per_s"] = 2 * state[0].nbytes / _best_seconds(copy, repeats)
    return out


def device_peaks(device, cache: str | None = None, **measure) -> dict | None:
    """Peak figures of `device` (a jax Device): the vendor table for a known accelerator, measured for a CPU
    (`measure_peaks(**measure)`, kept in the JSON file `cache` when given, so every block of one suite run
    uses the same CPU peaks); None for an accelerator not in the table."""
    if device.platform != "cpu":
        return table_peaks(device.device_kind)
    if cache and os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)
    peaks = measure_peaks(**measure)
    if cache:
        from remap_jax.runtime import atomic

        atomic.write_json(cache, peaks)
    return peaks


def cost(jitted, *args) -> dict:
    """{"flops", "bytes"}: XLA's cost analysis of `jitted.lower(*args).compile()` (args may be arrays or
    jax.ShapeDtypeStruct); `jitted` may also be an already lowered program (`jax.stages.Lowered`), given
    without args. For an SPMD program over several devices the figures are one device's share."""
    lowered = jitted.lower(*args) if hasattr(jitted, "lower") else jitted
    analysis = lowered.compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return {"flops": float(analysis.get("flops", 0.0)), "bytes": float(analysis.get("bytes accessed", 0.0))}


def scaled(cost_: dict, times: float) -> dict:
    """A program's cost repeated `times` times (e.g. one chunk step of a streamed search)."""
    return {k: v * times for k, v in cost_.items()}


def bound_seconds(cost_: dict, peaks: dict, dtype: str = "float32") -> float:
    """max(flops / peak FLOP/s of `dtype`, bytes / peak bytes/s): one device's lower bound on the time."""
    flops = peaks["bfloat16_flops" if dtype == "bfloat16" else "float32_flops"]
    return max(cost_["flops"] / flops, cost_["bytes"] / peaks["bytes_per_s"])


def fields(cost_: dict | None, peaks: dict | None, dtype: str, measured_s: float) -> dict:
    """The row fields of one speed figure: measured_ms, gflop and gbytes (the program's cost), bound_ms (the
    roofline's lower bound on the time) and of_bound (bound / measured: the fraction of the roofline
    reached); None where there is no XLA program (`cost_` None) or no peaks (an accelerator not in PEAKS)."""
    out = {"measured_ms": measured_s * 1e3, "gflop": None, "gbytes": None, "bound_ms": None, "of_bound": None}
    if cost_ is None:
        return out
    out["gflop"], out["gbytes"] = cost_["flops"] / 1e9, cost_["bytes"] / 1e9
    if peaks is not None and measured_s > 0:
        bound = bound_seconds(cost_, peaks, dtype)
        out["bound_ms"], out["of_bound"] = bound * 1e3, bound / measured_s
    return out
