"""The request batcher: concurrent queries described together, in a few static batch sizes.

Requests put their item on a bounded asyncio queue and await the result. One worker takes the first waiting
item, gathers more for at most `max_wait_s` (only when the policy has batch sizes above 1) up to the largest
size, and runs the batch function on a worker thread, so the event loop keeps accepting requests while the
device computes. The batch function pads a batch to the smallest compiled size that holds it
(`BatchPolicy.padded`), so only `sizes` are ever compiled (at start, `SearchService.warmup`). When the queue
already holds `max_queue` items a new request is refused at once (`Overloaded`, HTTP 503) instead of piling
up.

Which sizes to use is a per-platform measurement (`DEFAULT_SIZES`; `measure_rates` and
`benchmarks/serve_load.py --sweep` re-measure it): on a small CPU one JAX CPU device describes the demo
model fastest at batch 2 and slower from batch 4 on, so sizes 1 and 2 serve more requests/s than batch 1
alone (docs/performance.md, "Serving: batch sizes"); on a GPU batching is what makes throughput.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["BatchPolicy", "Batcher", "DEFAULT_SIZES", "Overloaded", "default_policy", "measure_rates"]

#: compiled batch sizes per JAX platform (see the module docstring for the measurement behind "cpu").
DEFAULT_SIZES = {"cpu": (1, 2), "gpu": (1, 2, 4, 8, 16), "cuda": (1, 2, 4, 8, 16), "rocm": (1, 2, 4, 8, 16),
                 "tpu": (1, 2, 4, 8, 16)}


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
    """How requests are batched.

    sizes: the batch sizes compiled at start, ascending; a batch of n items runs at the smallest size >= n.
    max_wait_s: how long the first item of a batch waits for company (ignored when max(sizes) is 1).
    max_queue: items allowed to wait; beyond it requests get 503.
    """

    sizes: tuple[int, ...] = (1,)
    max_wait_s: float = 0.005
    max_queue: int = 64

    def __post_init__(self):
        sizes = tuple(sorted({int(s) for s in self.sizes}))
        if not sizes or sizes[0] < 1:
            raise ValueError(f"batch sizes: expected positive integers, got {self.sizes}")
        if self.max_wait_s < 0 or self.max_queue < 1:
            raise ValueError(f"max_wait_s >= 0 and max_queue >= 1 expected, got {self.max_wait_s}, "
                             f"{self.max_queue}")
        object.__setattr__(self, "sizes", sizes)

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def padded(self, n: int) -> int:
        """The compiled size a batch of `n` (1 <= n <= max_batch) items runs at."""
        for size in self.sizes:
            if size >= n:
                return size
        raise ValueError(f"batch of {n}: larger than the largest compiled size {self.max_batch}")


def default_policy(platform: str, sizes: Sequence[int] | None = None, **fields) -> BatchPolicy:
    """The policy for a JAX `platform` ("cpu", "gpu", "tpu"): `DEFAULT_SIZES[platform]` unless `sizes`."""
    return BatchPolicy(tuple(sizes) if sizes else DEFAULT_SIZES.get(platform, (1, 2, 4, 8)), **fields)


class Overloaded(Exception):
    """The batcher's queue is full: the request is refused now rather than queued."""


class Batcher:
    """Collects concurrently submitted items into batches for `run(items) -> results` (same length; a result
    that is an Exception is raised in its submitter). `run` executes on one worker thread, one batch at a
    time (the device is the bottleneck; a second thread would only contend for it)."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], policy: BatchPolicy):
        self._run = run
        self.policy = policy
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.in_flight = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="remap-serve-batch")
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def queued(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def submit(self, item: Any) -> Any:
        """Queues `item` and waits for its result. Raises Overloaded when `max_queue` items already wait."""
        if self._queue is None:
            raise RuntimeError("Batcher.submit: the batcher is not started")
        if self._queue.qsize() >= self.policy.max_queue:
            raise Overloaded(f"{self._queue.qsize()} requests already queued (limit {self.policy.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            batch = [await queue.get()]
            if self.policy.max_batch > 1:
                deadline = loop.time() + self.policy.max_wait_s
                while len(batch) < self.policy.max_batch:
                    if not queue.empty():
                        batch.append(queue.get_nowait())
                        continue
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), remaining))
                    except TimeoutError:
                        break
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]  # clients that went away
            if not batch:
                continue
            self.in_flight = len(batch)
            try:
                results = await loop.run_in_executor(self._executor, self._run, [item for item, _ in batch])
            except Exception as e:  # the whole batch failed: every submitter gets the error
                results = [e] * len(batch)
            finally:
                self.in_flight = 0
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def measure_rates(describe: Callable[[np.ndarray], Any], shape: Sequence[int], sizes: Sequence[int],
                  seconds: float = 2.0, rounds: int = 2) -> dict[int, float]:
    """Images/s of `describe(uint8 (B, *shape) batch)` (blocking) at each batch size B in `sizes`.

    Each size is compiled and run once first; then the sizes take turns, `rounds` times `seconds / rounds`
    each, so that a machine whose load changes during the run affects every size alike. Returns {B: img/s}.
    """
    rng = np.random.default_rng(0)
    batches = {b: rng.integers(0, 256, (b, *shape), dtype=np.uint8) for b in sizes}
    for b in sizes:
        describe(batches[b])
    images = dict.fromkeys(sizes, 0)
    spent = dict.fromkeys(sizes, 0.0)
    for _ in range(rounds):
        for b in sizes:
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / rounds:
                describe(batches[b])
                images[b] += b
            spent[b] += time.perf_counter() - start
    return {b: images[b] / spent[b] for b in sizes}
