"""Keeping freed host memory in the process, so that XLA:CPU's per-call buffers stop page-faulting (opt-in).

XLA:CPU allocates a program's buffers with malloc on its worker threads at every call and frees them at
the end (hundreds of MB per image for a ResNet-50 description at 1024x768). glibc serves each thread from
its own arena, whose heaps hold at most 64 MB, so every large buffer is mmapped and unmapped per call, and
the kernel hands the next call fresh zeroed pages: tens of thousands of page faults per call. Three malloc
settings keep that memory in the process instead: one arena (the main heap, which has no size cap),
buffers below 2 GiB from that heap rather than mmapped, and a freed heap top of up to 2 GiB kept rather
than returned.

What that is worth depends on what a page fault costs on the machine (`benchmarks/host_memory_bench.py`
measures it side by side). The costs: every thread allocates under one lock (training steps and
multi-threaded decoding slow down), a buffer above 2 GiB is still mapped per call, and the process keeps
its peak heap until it exits. PyTorch's CPU inference pays the same faults
(`benchmarks/compare_torch.py --retain-memory`). The measurements are in docs/performance.md ("Page faults
and the host-memory switch").

So it is opt-in: `REMAP_JAX_RETAIN_MEMORY=1` makes the describing commands (`remap-extract`, `train.eval`,
`train.init_head`) apply the settings first (`apply_requested`), and a script calls
`retain_freed_memory()` before its first JAX computation, or sets the variables of `environment()` for a
process it starts. A setting the user made wins: one named in the environment (`MALLOC_ARENA_MAX`,
`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, or `GLIBC_TUNABLES=glibc.malloc.arena_max=...`) is
left alone. Other C libraries (macOS, musl) have no such settings: nothing is done there.
"""

from __future__ import annotations

import ctypes
import os
import platform
import warnings
from collections.abc import Mapping

__all__ = ["SETTINGS", "SWITCH", "apply_requested", "environment", "requested", "retain_freed_memory",
           "settings"]

SWITCH = "REMAP_JAX_RETAIN_MEMORY"  # "1": the describing commands apply the settings; "0" or unset: not

# name -> (mallopt parameter, environment variable glibc reads at start-up, value)
SETTINGS = {
    "arena_max": (-8, "MALLOC_ARENA_MAX", 1),  # M_ARENA_MAX: every thread allocates from the main heap
    "mmap_threshold": (-3, "MALLOC_MMAP_THRESHOLD_", (1 << 31) - 1),  # M_MMAP_THRESHOLD: up to 2 GiB, heap
    "trim_threshold": (-1, "MALLOC_TRIM_THRESHOLD_", (1 << 31) - 1),  # M_TRIM_THRESHOLD: keep the freed top
}


def _named_by_user(name: str, variable: str, environ: Mapping[str, str]) -> bool:
    tunables = environ.get("GLIBC_TUNABLES", "")
    return variable in environ or f"glibc.malloc.{name}=" in tunables


def settings(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """{name: value} of the `SETTINGS` that `environ` (default: os.environ) leaves to us."""
    environ = os.environ if environ is None else environ
    return {name: value for name, (_, variable, value) in SETTINGS.items()
            if not _named_by_user(name, variable, environ)}


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The same settings as environment variables, for a process about to be started (glibc reads them at
    its start-up): {variable: value} for those `environ` (default: os.environ) does not name."""
    chosen = settings(environ)
    return {SETTINGS[name][1]: str(value) for name, value in chosen.items()}


def requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether `environ` (default: os.environ) asks for the settings: REMAP_JAX_RETAIN_MEMORY=1."""
    environ = os.environ if environ is None else environ
    switch = environ.get(SWITCH, "0")
    if switch not in ("0", "1"):
        raise ValueError(f"{SWITCH}={switch!r}: expected 1 (keep freed memory) or 0 (glibc's defaults)")
    return switch == "1"


def apply_requested(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """`retain_freed_memory(environ)` where `requested(environ)`, else nothing ({}): what the describing
    commands call first."""
    return retain_freed_memory(environ) if requested(environ) else {}


def _jax_backend_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def retain_freed_memory(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Applies `settings(environ)` to this process with glibc's mallopt; returns {name: value} applied
    ({} under another C library, or when the environment names them all). Call it before JAX starts its
    backend: threads that already allocated keep their own arenas (a warning says so when a backend is
    running; the settings still apply to the other threads)."""
    chosen = settings(environ)
    if not chosen or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return {}
    if _jax_backend_started():
        warnings.warn("retain_freed_memory: a JAX backend is already running; its worker threads keep their "
                      "own malloc arenas, so their buffers are still mmapped per call. Call it before the "
                      "first JAX computation (as the describing commands do).", RuntimeWarning, stacklevel=2)
    libc = ctypes.CDLL(None)
    applied = {}
    for name, value in chosen.items():
        parameter = SETTINGS[name][0]
        if libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) != 1:
            raise OSError(f"retain_freed_memory: glibc's mallopt refused {name} = {value} "
                          f"(parameter {parameter}); expected it to accept it (glibc >= 2.26)")
        applied[name] = value
    return applied
