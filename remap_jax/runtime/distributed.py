"""Several processes, one JAX job: joining it, which rows each process owns, gathering results.

    from remap_jax.runtime import distributed
    distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # or from the cluster's env
    rows = distributed.local_rows(sharding, global_batch)    # the slice of a global batch this host feeds
    parts = distributed.allgather_json({"failed": [...]})    # small Python objects from every process

`jax.distributed.initialize` takes the coordinator address, the process count and this process's id from its
arguments, or finds them itself on SLURM, Open MPI, mpi4py, Kubernetes and Cloud TPU (and reads
`JAX_COORDINATOR_ADDRESS` from the environment). On CPU the processes talk through gloo collectives, which
`initialize` selects; accelerators use their own.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

__all__ = ["add_flags", "allgather_json", "allgather_rows", "host_copy", "initialize", "initialize_from_args",
           "is_main_process", "local_rows", "share", "sync_processes", "use_cpu_cores"]

DEVICE_COUNT_FLAG = "xla_force_host_platform_device_count"


def use_cpu_cores(count: int = 0) -> int:
    """Gives JAX's CPU backend `count` devices (0: one per core this process may run on), unless XLA_FLAGS
    already sets --xla_force_host_platform_device_count; returns the device count set (0: left alone).

    XLA:CPU runs a device's program on one thread, so on a CPU host the commands' data parallelism over
    devices is what uses the cores (docs/performance.md, "The CPU backend"). Accelerator backends are
    unaffected. Must run before anything touches a device (the commands call it first); afterwards it
    raises RuntimeError.
    """
    if count < 0:
        raise ValueError(f"cpu devices: expected >= 0 (0 = one per core), got {count}")
    if DEVICE_COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return 0
    count = count or len(os.sched_getaffinity(0))
    jax.config.update("jax_num_cpu_devices", count)
    return count


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> bool:
    """Joins a multi-process job; returns whether this process is part of one.

    With any argument given, or `auto=True`, or `JAX_COORDINATOR_ADDRESS` set, calls
    `jax.distributed.initialize` (missing values come from cluster auto-detection); otherwise does nothing
    (a single process). Must run before anything touches a device.
    """
    if jax.distributed.is_initialized():
        return True
    given = any(v is not None for v in (coordinator_address, num_processes, process_id))
    if not (given or auto or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return False
    # CPU processes need a cross-process collectives backend; this setting does not affect GPUs or TPUs.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


def is_main_process() -> bool:
    """Process 0 writes the shared outputs (exports, JSON, PNG, descriptor files)."""
    return jax.process_index() == 0


def share(n: int, index: int | None = None, count: int | None = None) -> np.ndarray:
    """The positions 0..n-1 that process `index` of `count` handles: contiguous, disjoint, covering all.

    Defaults to this process in the current job.
    """
    index = jax.process_index() if index is None else int(index)
    count = jax.process_count() if count is None else int(count)
    if not 0 <= index < count:
        raise ValueError(f"share: expected 0 <= index < count, got index {index} of {count}")
    return np.array_split(np.arange(n), count)[index]


def local_rows(sharding: jax.sharding.Sharding, num_rows: int) -> slice:
    """The rows of a (num_rows, ...) global batch placed with `sharding` that live on this process's
    devices, as one contiguous slice (what `jax.make_array_from_process_local_data` expects)."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map((num_rows,)).values():
        rows = index[0]
        starts.append(rows.start or 0)
        stops.append(num_rows if rows.stop is None else rows.stop)
    start, stop = min(starts), max(stops)
    if sum(b - a for a, b in {(a, b) for a, b in zip(starts, stops, strict=True)}) != stop - start:
        raise ValueError(f"sharding: this process's rows of a {num_rows}-row batch are not contiguous")
    return slice(start, stop)


def allgather_rows(values: np.ndarray, counts: list[int]) -> np.ndarray:
    """Concatenation, in process order, of every process's `values` (counts[p] rows from process p).

    Each process passes its own rows; shapes past the first axis must agree.
    """
    from jax.experimental import multihost_utils

    values = np.asarray(values)
    longest = max(max(counts), 1)
    padded = np.zeros((longest, *values.shape[1:]), values.dtype)
    padded[: len(values)] = values
    stacked = np.asarray(multihost_utils.process_allgather(padded))  # (processes, longest, ...)
    return np.concatenate([stacked[p, : counts[p]] for p in range(len(counts))])


def allgather_json(obj) -> list:
    """Every process's small JSON-serialisable `obj`, in process order (e.g. lists of failed inputs)."""
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int64))).reshape(-1)
    padded = np.zeros((max(int(sizes.max()), 1),), np.uint8)
    padded[: data.size] = data
    stacked = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(stacked[p, : sizes[p]].tobytes().decode()) for p in range(len(sizes))]


def host_copy(tree):
    """numpy copies of a tree of arrays; arrays replicated over several processes' devices give this process's
    copy (what `jax.device_get` refuses for arrays that are not fully addressable)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_data(0)
        return np.asarray(x)

    return jax.tree.map(one, tree)


def sync_processes(name: str) -> None:
    """Waits until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def add_flags(parser) -> None:
    """`--coordinator_address`, `--num_processes`, `--process_id` (see `initialize`) and `--cpu_devices` (see
    `use_cpu_cores`) on an argparse parser."""
    group = parser.add_argument_group("several processes (jax.distributed; absent: cluster auto-detection "
                                      "where JAX_COORDINATOR_ADDRESS is set, else one process)")
    group.add_argument("--coordinator_address", help="host:port of process 0, e.g. 10.0.0.1:1234")
    group.add_argument("--num_processes", type=int, help="how many processes take part")
    group.add_argument("--process_id", type=int, help="this process's id, 0 .. num_processes - 1")
    group.add_argument("--cpu_devices", type=int, default=0,
                       help="JAX devices on a CPU host (0: one per core; see use_cpu_cores)")


def initialize_from_args(args) -> bool:
    """`use_cpu_cores` and `initialize` with the values of `add_flags`."""
    use_cpu_cores(args.cpu_devices)
    return initialize(args.coordinator_address, args.num_processes, args.process_id)
