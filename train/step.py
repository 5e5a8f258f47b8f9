"""The data-parallel train step: one `jax.jit` program over a `jax.sharding.Mesh` with a `data` axis.

The tuple batch is sharded over the devices (`NamedSharding(mesh, P('data'))`), parameters and optimiser
state are replicated (`P()`), and XLA's SPMD partitioner inserts the gradient all-reduce. This is the
successor of `pmap`; the same program runs on one CPU, N GPUs or a TPU slice, and on several hosts after
`jax.distributed.initialize()` (each host then feeds the rows of the global batch its devices hold).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from remap_jax.fit import losses


@struct.dataclass
class TrainState:
    """Everything that changes during training. `step` counts train steps (micro-batches)."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # frozen collections, e.g. {"batch_stats": ...}; never updated

    def variables(self) -> dict:
        """The model's variables {"params", **model_state}."""
        return {"params": self.params, **self.model_state}


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D mesh with axis 'data' over `devices` (default: every device of every host)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), ("data",))


def create_train_state(variables: Mapping, tx) -> TrainState:
    variables = dict(variables)
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=variables)


def make_train_step(model, tx, *, loss: str, margin: float, mesh: Mesh, frozen=None):
    """One jitted training step over `mesh`.

    The returned function `step(state, images, weights) -> (state, metrics)` takes
      images: (B, T, H, W, 3) uint8 tuples (T = 2 + num_negatives), B divisible by the mesh size; the model
        normalises the pixels itself,
      weights: (B,) float32 tuple weights (0 for padding tuples),
    shards both over the 'data' axis, keeps `state` replicated and returns replicated metrics
    {'loss', 'active', 'grad_norm'}. `state` is donated. `frozen` (a pytree of bools like the params, see
    `train.optim.frozen_mask`) stops gradients at frozen parameters, so e.g. a frozen backbone costs no
    backward pass.
    """
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))

    def step(state: TrainState, images, weights):
        b, t = images.shape[:2]
        x = images.reshape((b * t,) + images.shape[2:])

        def loss_fn(params):
            if frozen is not None:
                params = jax.tree_util.tree_map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params,
                                                frozen)
            desc = model.apply({"params": params, **state.model_state}, x)
            return losses.tuple_loss(desc.reshape(b, t, -1), loss, margin, weights)

        (value, active), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, {"loss": value, "active": active, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(step, in_shardings=(replicated, batch, batch), out_shardings=(replicated, replicated),
                   donate_argnums=(0,))


def to_global_batch(rows: np.ndarray, sharding: NamedSharding, global_rows: int | None = None) -> jax.Array:
    """This host's rows of a batch -> the global array sharded over 'data'.

    With one process `rows` is the whole batch. With several, each host passes only the rows its devices hold
    (`remap_jax.runtime.distributed.local_rows(sharding, global_rows)`), so no host loads the others' images.
    """
    if jax.process_count() == 1:
        return jax.device_put(rows, sharding)
    if global_rows is None:
        raise ValueError("global_rows: expected the global batch size when several processes feed a batch")
    return jax.make_array_from_process_local_data(sharding, rows, (global_rows, *rows.shape[1:]))


def pad_to_multiple(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@jax.jit
def all_finite(tree) -> jax.Array:
    """True when every leaf of `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
