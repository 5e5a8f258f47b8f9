"""What `benchmarks/index_bench.py` measures of an index: recall@k against exact search, best-of-n search
time, a result row, and the resident memory an index takes once saved and loaded again."""

from __future__ import annotations

import ctypes
import gc
import math
import os
import tempfile
import time

import numpy as np


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = [len(np.intersect1d(a[:k], b[:k], assume_unique=True)) for a, b in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k


def timed(fn, repeats: int = 1):
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def result_row(name, params, build_s, bytes_per_vector, search_s, found, truth, n_queries):
    return {
        "method": name,
        "params": params,
        "build_s": round(build_s, 3),
        "bytes_per_vector": int(bytes_per_vector),
        "queries_per_s": n_queries / search_s,
        "recall@1": recall_at(found, truth, 1),
        "recall@10": recall_at(found, truth, 10),
        "recall@100": recall_at(found, truth, 100),
    }


def search_sweep(leaves: int):
    """Partitions searched per query: about 2%, 5% and 10% of the leaves."""
    return sorted({max(1, leaves // 50), max(1, leaves // 20), max(1, leaves // 10)})


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trimmed_rss() -> int:
    """Resident bytes after a GC and glibc's malloc_trim (freed heap handed back), so deltas are live data."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the figure then includes freed heap
        pass
    return _rss_bytes()


def built(build, save, load):
    """(index, build seconds, resident bytes of the index) for ``build()``.

    The built index is saved (``save(index, folder)``), dropped and loaded again (``load(folder)``); the
    bytes are what the load added to this process, so build-time temporaries that an index keeps until it
    is freed are not counted (ScaNN holds a few hundred bytes per vector more right after some builds).
    The loaded index is returned and searched.
    """
    t0 = time.perf_counter()
    index = build()
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="index_bench-") as tmp:
        folder = os.path.join(tmp, "index")
        save(index, folder)
        del index
        before = _trimmed_rss()
        index = load(folder)
        rss = max(0, _trimmed_rss() - before)
    return index, build_s, rss
