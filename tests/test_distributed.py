"""remap_jax.runtime.distributed in one process: shares, the rows a process feeds, gathering (identity here),
and
initialize doing nothing without a job to join. tests/test_multiprocess.py runs the real thing."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from remap_jax.runtime import distributed


def test_shares_are_contiguous_disjoint_and_cover_everything():
    for n, count in [(10, 3), (7, 7), (3, 5), (0, 2)]:
        shares = [distributed.share(n, i, count) for i in range(count)]
        assert np.concatenate(shares).tolist() == list(range(n))
        assert all(np.all(np.diff(s) == 1) for s in shares if len(s) > 1)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert distributed.share(5).tolist() == [0, 1, 2, 3, 4]  # one process: everything
    with pytest.raises(ValueError, match="0 <= index < count"):
        distributed.share(5, 3, 3)


def test_local_rows_of_a_batch_sharded_over_this_processes_devices():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    assert distributed.local_rows(NamedSharding(mesh, P("data")), 16) == slice(0, 16)


def test_gathers_and_initialize_in_a_single_process():
    assert not distributed.initialize()  # nothing to join: a single process, no jax.distributed call
    rows = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(distributed.allgather_rows(rows, [3]), rows)
    failed = {"failed": [["a.jpg", "broken"]]}
    assert distributed.allgather_json(failed) == [failed]
    replicated = jax.device_put(np.ones(3), NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P()))
    assert isinstance(distributed.host_copy({"x": replicated})["x"], np.ndarray)
    distributed.sync_processes("no-op with one process")


def _device_count_in_fresh_process(code: str, xla_flags: str | None) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_use_cpu_cores_gives_one_device_per_core_unless_xla_flags_decide():
    import os

    code = ("import jax\nfrom remap_jax.runtime.distributed import use_cpu_cores\nn = use_cpu_cores({arg})\n"
            "print(n, jax.device_count())\n")
    cores = len(os.sched_getaffinity(0))
    assert _device_count_in_fresh_process(code.format(arg=""), None) == [str(cores), str(cores)]
    assert _device_count_in_fresh_process(code.format(arg="3"), None) == ["3", "3"]
    # the user's XLA_FLAGS win: nothing is changed
    flags = "--xla_force_host_platform_device_count=5"
    assert _device_count_in_fresh_process(code.format(arg="3"), flags) == ["0", "5"]


def test_use_cpu_cores_refuses_bad_counts_and_a_started_backend():
    with pytest.raises(ValueError, match="cpu devices: expected >= 0"):
        distributed.use_cpu_cores(-1)
    code = ("import jax\njax.devices()\nfrom remap_jax.runtime.distributed import use_cpu_cores\ntry:\n"
            "    use_cpu_cores(2)\nexcept RuntimeError:\n    print('refused')\n")
    assert _device_count_in_fresh_process(code, None) == ["refused"]
