"""remap_jax.distributed in one process: shares, the rows a process feeds, gathering (identity here), and
initialize doing nothing without a job to join. tests/test_multiprocess.py runs the real thing."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from remap_jax import distributed


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
