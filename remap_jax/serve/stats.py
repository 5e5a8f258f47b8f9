"""Counters behind `GET /stats`: requests and errors per route, latency percentiles, batch sizes."""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

__all__ = ["Stats"]


class Stats:
    """Thread-safe service counters. Latencies keep the last `window` requests per route (milliseconds)."""

    def __init__(self, window: int = 4096):
        self.started = time.time()
        self._lock = threading.Lock()
        self._window = int(window)
        self.requests: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()  # route -> responses with status >= 400
        self.status: collections.Counter = collections.Counter()
        self._latency: dict[str, collections.deque] = {}
        self.batch_sizes: collections.Counter = collections.Counter()  # images per compiled call
        self.padded_sizes: collections.Counter = collections.Counter()  # the compiled size it ran at
        self.overloaded = 0

    def record(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[route] += 1
            self.status[str(status)] += 1
            if status >= 400:
                self.errors[route] += 1
            if status == 503:
                self.overloaded += 1
            self._latency.setdefault(route, collections.deque(maxlen=self._window)).append(seconds * 1e3)

    def record_batch(self, images: int, padded: int) -> None:
        with self._lock:
            self.batch_sizes[int(images)] += 1
            self.padded_sizes[int(padded)] += 1

    def snapshot(self) -> dict:
        """JSON-ready counters; latency per route as count and p50/p90/p99 in ms over the window."""
        with self._lock:
            latency = {}
            for route, values in self._latency.items():
                v = np.asarray(values, np.float64)
                p50, p90, p99 = np.percentile(v, [50, 90, 99]) if v.size else (0.0, 0.0, 0.0)
                latency[route] = {"count": int(v.size), "p50_ms": round(float(p50), 2),
                                  "p90_ms": round(float(p90), 2), "p99_ms": round(float(p99), 2)}
            return {
                "uptime_s": round(time.time() - self.started, 1),
                "requests": dict(self.requests),
                "requests_total": int(sum(self.requests.values())),
                "errors": dict(self.errors),
                "errors_total": int(sum(self.errors.values())),
                "status": dict(self.status),
                "overloaded_503": self.overloaded,
                "latency_ms": latency,
                "batch_size_histogram": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "compiled_size_histogram": {str(k): v for k, v in sorted(self.padded_sizes.items())},
            }
