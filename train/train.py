"""The trainer: end-to-end tuple training of a retrieval model across all devices.

`train_and_evaluate(config, workdir)` is the whole job (flax `examples/imagenet` shape):

1. validate the config (before any compute), build the model (backbone taps + REMAP or baseline head, optional
   pretrained backbone and `head_init` from `train.init_head`), the optimiser and the device mesh;
2. restore the latest Orbax checkpoint in `workdir/checkpoints` if there is one (automatic resume);
3. optionally evaluate the initial model on the test split (revisited protocol table);
4. every epoch: mine hard negatives with the current model, then train on (query, positive, N negatives)
   tuples with one `jax.jit` step over a `jax.sharding.Mesh` with a `data` axis: the tuple batch is sharded
   over the devices (`NamedSharding(mesh, P('data'))`), parameters and optimiser state are replicated, and
   XLA inserts the gradient all-reduce. This is the successor of `pmap`; the same program runs on one CPU, N
   GPUs or a TPU slice, and on several hosts after `jax.distributed.initialize()`;
5. log loss, fraction of active triplets, learning rate and images/s (tqdm + TensorBoard event files), compute
   validation mAP every `eval_every_epochs`, export the best model (by validation mAP) to `workdir/export` for
   `remap_jax.Extractor.from_checkpoint`, checkpoint periodically (params, optimiser state, step, the epoch's
   mined tuples and the position in the epoch), and stop with `NonFiniteLossError` on a NaN/inf loss without
   writing the bad state;
6. evaluate the exported model on the test split and print the before/after table.

The pieces are importable on their own (`make_train_step`, `make_optimizer`, `param_labels`, ...) so that
tests and benchmarks can drive them with small models.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from remap_jax import losses, mining
from remap_jax.data import images as image_ops

log = logging.getLogger("remap_jax.train")

HEADS = ("remap", "rmac", "gem", "mac", "spoc")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("exponential", "cosine", "constant")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------- config


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Check values the type system cannot (ml_collections already locks keys and types).

    Raises:
      ValueError listing every wrong field with its value and what was expected.
    """
    errors: list[str] = []

    def check(ok: bool, field: str, expected: str) -> None:
        if not ok:
            value = config
            for part in field.split("."):
                value = value[part]
            errors.append(f"config.{field} = {value!r}: expected {expected}")

    def is_size(v) -> bool:
        return isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) and x >= 32 for x in v)

    m = config.model
    check(bool(config.dataset), "dataset", "a training set name (e.g. sfm120k, synthetic_landmarks)")
    check(is_size(config.image_size), "image_size", "(height, width), ints >= 32")
    check(is_size(config.test_image_size), "test_image_size", "(height, width), ints >= 32")
    check(config.num_workers >= 1, "num_workers", ">= 1")
    check(m.head in HEADS, "model.head", f"one of {HEADS}")
    check(isinstance(m.taps, (tuple, list)) and len(m.taps) >= 1 and all(isinstance(t, str) for t in m.taps),
          "model.taps", "a non-empty tuple of backbone block names")
    check(m.levels >= 1, "model.levels", ">= 1")
    check(m.out_dim >= 0, "model.out_dim", ">= 0 (0 keeps the input dimension)")
    check(m.p_init > 0, "model.p_init", "> 0")
    check(m.dtype in DTYPES, "model.dtype", f"one of {tuple(DTYPES)}")
    check(not m.pretrained or os.path.exists(m.pretrained), "model.pretrained",
          "'' or an existing weights file")
    check(not config.head_init or os.path.exists(config.head_init), "head_init",
          "'' or an existing file written by train.init_head")
    check(config.num_negatives >= 1, "num_negatives", ">= 1")
    check(config.queries_per_epoch >= config.batch_size, "queries_per_epoch", ">= batch_size")
    check(config.pool_size >= config.num_negatives, "pool_size", ">= num_negatives")
    check(config.mining_candidates >= config.num_negatives, "mining_candidates", ">= num_negatives")
    check(config.loss in losses.LOSSES, "loss", f"one of {tuple(losses.LOSSES)}")
    check(config.margin > 0, "margin", "> 0")
    check(config.num_epochs >= 1, "num_epochs", ">= 1")
    check(config.batch_size >= 1, "batch_size", ">= 1")
    check(config.grad_accum_steps >= 1, "grad_accum_steps", ">= 1")
    check(config.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}")
    check(config.learning_rate > 0, "learning_rate", "> 0")
    for f in ("lr_mult_backbone", "lr_mult_alpha", "lr_mult_whitening", "lr_mult_head"):
        check(config[f] >= 0, f, ">= 0 (0 freezes the group)")
    check(isinstance(config.frozen_backbone_blocks, (tuple, list))
          and all(isinstance(b, str) and b for b in config.frozen_backbone_blocks),
          "frozen_backbone_blocks", "a tuple of backbone module names or prefixes, e.g. ('conv1', 'layer1')")
    check(0 <= config.momentum < 1, "momentum", "in [0, 1)")
    check(config.weight_decay >= 0, "weight_decay", ">= 0")
    check(config.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")
    check(config.warmup_steps >= 0, "warmup_steps", ">= 0")
    check(config.decay_per_epoch >= 0, "decay_per_epoch", ">= 0")
    check(config.grad_clip_norm >= 0, "grad_clip_norm", ">= 0 (0 = off)")
    check(config.log_every_steps >= 1, "log_every_steps", ">= 1")
    check(config.eval_every_epochs >= 0, "eval_every_epochs", ">= 0 (0 = never)")
    check(config.checkpoint_every_steps >= 1, "checkpoint_every_steps", ">= 1")
    check(config.keep_checkpoints >= 1, "keep_checkpoints", ">= 1")
    check(config.describe_batch_size >= 1, "describe_batch_size", ">= 1")
    if not errors and m.arch:
        errors += _check_arch(m.arch, tuple(m.taps))
    if errors:
        raise ValueError("invalid training config:\n  " + "\n  ".join(errors))


def _check_arch(arch: str, taps: tuple[str, ...]) -> list[str]:
    try:
        from remap_jax import backbones
    except ImportError:  # backbones not installed in this build: the model builder will say so
        return []
    try:
        valid = backbones.valid_taps(arch)
    except (KeyError, ValueError) as e:
        return [f"config.model.arch = {arch!r}: {e}"]
    bad = [t for t in taps if t not in valid]
    return [f"config.model.taps: {bad} are not blocks of {arch}; valid: {', '.join(valid)}"] if bad else []


# ------------------------------------------------------------------------------------------------ model


def load_head_init(path: str, taps: Sequence[str]) -> tuple[dict[str, np.ndarray], tuple | None]:
    """KL alphas per layer and whitening `(W, b)` from a `head_init.npz` written by `train.init_head`.

    Returns:
      (alpha_init mapping layer -> (R,), (W, b) or None)
    """
    from train.init_head import load_head_init as read

    init = read(path)
    if tuple(init.layers) != tuple(taps):
        raise ValueError(f"head_init {path!r}: computed for layers {list(init.layers)}, but "
                         f"config.model.taps is {list(taps)}; rerun train.init_head with this config")
    return init.alpha_init, init.whitening_init


def make_head(model_config: ml_collections.ConfigDict, head_init: str = ""):
    """The pooling head named by `model_config.head` (a flax module: dict of (B,H,W,C) maps -> (B, D))."""
    from remap_jax import heads

    alpha_init, whitening_init = load_head_init(head_init, model_config.taps) if head_init else (None, None)
    options = dict(
        layers=tuple(model_config.taps), levels=model_config.levels,
        include_global=model_config.include_global, out_dim=model_config.out_dim or None,
        whiten=model_config.whiten, p_init=model_config.p_init,
        alpha_init=alpha_init, whitening_init=whitening_init,
    )
    cls = {"remap": heads.REMAPHead, "rmac": heads.RMAC, "gem": heads.GeM, "mac": heads.MAC,
           "spoc": heads.SPoC}[model_config.head]
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in fields})


def build_model(config: ml_collections.ConfigDict):
    """RetrievalModel(backbone taps -> head) from `config.model` (and `config.head_init`)."""
    from remap_jax.backbones import create_backbone
    from remap_jax.model import RetrievalModel

    m = config.model
    backbone = create_backbone(m.arch, dtype=DTYPES[m.dtype])
    return RetrievalModel(backbone=backbone, head=make_head(m, config.head_init), taps=tuple(m.taps))


def init_variables(model, config: ml_collections.ConfigDict, key) -> dict:
    """Initial variables: head from `key`, backbone from `config.model.pretrained` or seeded random init.

    With `config.model.arch = ""` (a custom `model` passed to `train_and_evaluate`) everything comes from
    `model.init(key, ...)`.
    """
    h, w = config.image_size
    variables = jax.jit(model.init)(key, jnp.zeros((1, h, w, 3), jnp.float32))
    variables = jax.tree_util.tree_map(np.asarray, dict(variables))
    if not config.model.arch:
        return variables
    from remap_jax.backbones import init_backbone, load_pretrained

    if config.model.pretrained:
        backbone = load_pretrained(config.model.arch, config.model.pretrained)
    else:  # the same random backbone train.init_head computed the head initialisation with
        backbone = init_backbone(config.model.arch, jax.random.PRNGKey(config.seed), (1, h, w, 3))
    for collection, tree in dict(backbone).items():
        tree = jax.tree_util.tree_map(np.asarray, tree)
        variables[collection] = {**variables.get(collection, {}), "backbone": tree}
    return variables


def check_eval_shapes(model, variables, config: ml_collections.ConfigDict) -> None:
    """Fail early if the evaluation size cannot run with parameters shaped at the training size.

    Region heads hold one alpha per ROI region, and the region count depends on the feature-map size, so
    `test_image_size` (and its portrait transpose) must give the same count as `image_size`.
    """
    h, w = config.test_image_size
    for shape in ((h, w), (w, h)):
        try:
            jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, *shape, 3), jnp.float32))
        except Exception as e:  # flax raises ScopeParamShapeError, others TypeError/ValueError
            raise ValueError(
                f"config.test_image_size = {tuple(config.test_image_size)}: the model trained at image_size "
                f"{tuple(config.image_size)} cannot describe {shape[0]}x{shape[1]} images "
                f"({type(e).__name__}: {str(e).splitlines()[0]}). Region heads have one alpha per ROI "
                f"region; use a test size whose feature map gives the same region count (e.g. the same size)"
            ) from None


# -------------------------------------------------------------------------------------------- optimiser


def param_labels(params, frozen_blocks: Sequence[str] = ()) -> Any:
    """Optimiser group of every parameter: 'backbone', 'alpha' (ROI-stream weights), 'whitening', 'head', or
    'frozen' for backbone parameters whose top-level module name starts with one of `frozen_blocks`
    (e.g. ``("conv1", "layer1", "layer2", "layer3")`` trains only a ResNet's last stage)."""

    def label(path, _):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys and keys[0] == "backbone":
            if frozen_blocks and len(keys) > 1 and keys[1].startswith(tuple(frozen_blocks)):
                return "frozen"
            return "backbone"
        if keys and keys[-1] == "alpha":
            return "alpha"
        if "whiten" in keys:
            return "whitening"
        return "head"

    return jax.tree_util.tree_map_with_path(label, params)


def group_lr_mults(config: ml_collections.ConfigDict) -> dict[str, float]:
    """Learning-rate multiplier of each optimiser group of `param_labels` (0 = frozen)."""
    return {"backbone": config.lr_mult_backbone, "alpha": config.lr_mult_alpha,
            "whitening": config.lr_mult_whitening, "head": config.lr_mult_head, "frozen": 0.0}


def check_frozen_blocks(config: ml_collections.ConfigDict, params) -> None:
    """Every entry of `config.frozen_backbone_blocks` must name (a prefix of) a backbone module."""
    names = list(params.get("backbone", {}))
    for block in config.frozen_backbone_blocks:
        if not any(n.startswith(block) for n in names):
            raise ValueError(
                f"frozen_backbone_blocks: {block!r} matches no module of backbone {config.model.arch!r}; "
                f"expected prefixes of {names}"
            )


def make_schedule(config: ml_collections.ConfigDict, base_lr: float, updates_per_epoch: int):
    """Learning rate per optimiser update: linear warm-up, then exponential / cosine decay or constant."""
    total = max(1, config.num_epochs * updates_per_epoch)
    warmup = min(config.warmup_steps, total - 1)
    if config.schedule == "constant":
        main = optax.constant_schedule(base_lr)
    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(base_lr, decay_steps=max(1, total - warmup))
    else:  # exponential, per epoch as in cnnimageretrieval: lr * exp(-decay * epoch), applied continuously

        def main(step):
            return base_lr * jnp.exp(-config.decay_per_epoch * step / max(1, updates_per_epoch))

    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


def make_optimizer(config: ml_collections.ConfigDict, params, updates_per_epoch: int):
    """Optax transformation with per-group learning rates, optional accumulation, alpha kept >= 0.

    Returns:
      (tx, schedule) where schedule(update_index) is the base learning rate (before group multipliers).
    """
    from remap_jax import heads

    mults = group_lr_mults(config)

    def group(mult: float):
        if mult == 0:
            return optax.set_to_zero()
        lr = make_schedule(config, config.learning_rate * mult, updates_per_epoch)
        if config.optimizer == "adam":
            if config.weight_decay:
                return optax.adamw(lr, weight_decay=config.weight_decay)
            return optax.adam(lr)
        parts = [optax.add_decayed_weights(config.weight_decay)] if config.weight_decay else []
        return optax.chain(*parts, optax.sgd(lr, momentum=config.momentum or None))

    labels = param_labels(params, config.frozen_backbone_blocks)
    used = set(jax.tree_util.tree_leaves(labels))
    chain = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
    chain.append(optax.multi_transform({g: group(mults[g]) for g in used}, labels))
    chain.append(heads.nonnegative_alpha())  # last: projects alpha back to >= 0 after the update
    tx = optax.chain(*chain)
    if config.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
    return tx, make_schedule(config, config.learning_rate, updates_per_epoch)


# ----------------------------------------------------------------------------------------- mesh and steps


@struct.dataclass
class TrainState:
    """Everything that changes during training. `step` counts train steps (micro-batches)."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # frozen collections, e.g. {"batch_stats": ...}; never updated


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D mesh with axis 'data' over `devices` (default: every device of every host)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), ("data",))


def create_train_state(variables: Mapping, tx) -> TrainState:
    variables = dict(variables)
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=variables)


def normalize_on_device(images):
    """uint8 (..., H, W, 3) -> float32 ImageNet-normalised; done on device so the host ships bytes."""
    mean = jnp.asarray(image_ops.IMAGENET_MEAN * 255.0)
    std = jnp.asarray(image_ops.IMAGENET_STD * 255.0)
    return (images.astype(jnp.float32) - mean) / std


def frozen_mask(config: ml_collections.ConfigDict, params) -> Any:
    """Pytree of bools: True for parameters whose group has learning-rate multiplier 0."""
    mults = group_lr_mults(config)
    labels = param_labels(params, config.frozen_backbone_blocks)
    return jax.tree_util.tree_map(lambda label: mults[label] == 0, labels)


def make_train_step(model, tx, *, loss: str, margin: float, mesh: Mesh, frozen=None):
    """One jitted training step over `mesh`.

    The returned function `step(state, images, weights) -> (state, metrics)` takes
      images: (B, T, H, W, 3) uint8 tuples (T = 2 + num_negatives), B divisible by the mesh size,
      weights: (B,) float32 tuple weights (0 for padding tuples),
    shards both over the 'data' axis, keeps `state` replicated and returns replicated metrics
    {'loss', 'active', 'grad_norm'}. `state` is donated. `frozen` (a pytree of bools like the params, see
    `frozen_mask`) stops gradients at frozen parameters, so e.g. a frozen backbone costs no backward pass.
    """
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))

    def step(state: TrainState, images, weights):
        b, t = images.shape[:2]
        x = normalize_on_device(images.reshape((b * t,) + images.shape[2:]))

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
        return new_state, {"loss": value, "active": active, "grad_norm": optax.global_norm(grads)}

    return jax.jit(step, in_shardings=(replicated, batch, batch), out_shardings=(replicated, replicated),
                   donate_argnums=(0,))


def make_describe_fn(model, mesh: Mesh):
    """Jitted `describe(variables, images uint8 (N, H, W, 3)) -> (N, D)`, images sharded over 'data'."""
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))

    def describe(variables, images):
        return model.apply(variables, normalize_on_device(images)).astype(jnp.float32)

    return jax.jit(describe, in_shardings=(replicated, batch), out_shardings=replicated)


def to_global_batch(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Host batch -> global array sharded over 'data'. Every host passes the full global batch; on several
    hosts each one contributes the rows that belong to its devices."""
    if jax.process_count() == 1:
        return jax.device_put(array, sharding)
    rows = array.shape[0] // jax.process_count()
    local = array[jax.process_index() * rows:(jax.process_index() + 1) * rows]
    return jax.make_array_from_process_local_data(sharding, local, array.shape)


def pad_to_multiple(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# ------------------------------------------------------------------------------------------- image input


class ImageSource:
    """Decoded, resized uint8 images of a dataset by index, loaded in threads, optionally cached in RAM.

    Args:
      read: i -> uint8 (H, W, 3) (e.g. `TrainingSet.read`).
      size: (height, width) every image is resized to (static shapes under jit).
      cache: keep resized images in memory.
      workers: decoding threads.
    """

    def __init__(self, read: Callable[[int], np.ndarray], size: Sequence[int], *, cache: bool = False,
                 workers: int = 4):
        self._read = read
        self.size = (int(size[0]), int(size[1]))
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        self._pool = ThreadPoolExecutor(max_workers=workers)
        # Prefetched batches run `get` on their own thread: on the decoding pool, `get` would wait for its
        # own per-image tasks queued behind it (a deadlock with workers=1).
        self._prefetcher = ThreadPoolExecutor(max_workers=1)

    def _one(self, i: int) -> np.ndarray:
        i = int(i)
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        img = image_ops.resize_to(self._read(i), self.size)
        if self._cache is not None:
            self._cache[i] = img
        return img

    def get(self, ids: np.ndarray) -> np.ndarray:
        """uint8 (*ids.shape, H, W, 3)."""
        ids = np.asarray(ids)
        flat = list(self._pool.map(self._one, ids.ravel().tolist()))
        return np.stack(flat).reshape(ids.shape + self.size + (3,))

    def prefetch(self, ids: np.ndarray):
        """Start loading `ids` in the background; `.result()` gives `get(ids)`."""
        return self._prefetcher.submit(self.get, ids)

    def close(self) -> None:
        self._prefetcher.shutdown(wait=False)
        self._pool.shutdown(wait=False)


def describe_images(describe, variables, source: ImageSource, ids: np.ndarray, *, batch_size: int,
                    mesh: Mesh, desc: str = "describe") -> np.ndarray:
    """Descriptors (N, D) float32 of images `ids` of `source`, in batches sharded over the mesh's devices.

    `describe` is `make_describe_fn(model, mesh)`; the last batch is padded (static shapes) and trimmed.
    Fewer ids than `batch_size` run as one batch padded to the next power of two, so calls with every count
    from 1 to `batch_size` compile at most log2(batch_size) + 1 programs, not one per count.
    """
    from tqdm import tqdm

    ids = np.asarray(ids)
    num_devices = mesh.devices.size
    bucket = 1 << max(0, len(ids) - 1).bit_length()
    batch_size = pad_to_multiple(min(batch_size, bucket), num_devices)
    sharding = NamedSharding(mesh, P("data"))
    out = []
    chunks = [ids[s:s + batch_size] for s in range(0, len(ids), batch_size)]
    pending = source.prefetch(_pad_ids(chunks[0], batch_size)) if chunks else None
    t0 = time.perf_counter()
    bar = tqdm(total=len(ids), desc=desc, unit="img", leave=False, disable=jax.process_index() != 0)
    for k, chunk in enumerate(chunks):
        images = pending.result()
        if k + 1 < len(chunks):
            pending = source.prefetch(_pad_ids(chunks[k + 1], batch_size))
        out.append(np.asarray(describe(variables, to_global_batch(images, sharding)))[: len(chunk)])
        bar.update(len(chunk))
        bar.set_postfix(img_s=f"{bar.n / max(time.perf_counter() - t0, 1e-9):.1f}")
    bar.close()
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _pad_ids(chunk: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk))]) if len(chunk) < size else chunk


# ----------------------------------------------------------------------------------------------- mining


def mine_epoch(describe, variables, source: ImageSource, training_set, config, epoch: int, *,
               mesh: Mesh) -> tuple[np.ndarray, dict]:
    """Hard-negative tuples for `epoch`: (Q, 2 + N) image indices, plus mining statistics."""
    labels = np.asarray(training_set.labels)
    qidx, pidx = np.asarray(training_set.qidx), np.asarray(training_set.pidx)
    pair_ids, pool_ids = mining.sample_epoch(config.seed, epoch, len(qidx), len(labels),
                                             config.queries_per_epoch, config.pool_size)
    queries = qidx[pair_ids]
    common = dict(batch_size=config.describe_batch_size, mesh=mesh)
    qdesc = describe_images(describe, variables, source, queries, desc=f"mining {epoch}: queries", **common)
    pdesc = describe_images(describe, variables, source, pool_ids, desc=f"mining {epoch}: pool", **common)
    cand, sims = mining.negative_candidates(qdesc, pdesc, labels[queries], labels[pool_ids],
                                            config.mining_candidates,
                                            pool_sharding=NamedSharding(mesh, P("data")))
    neg_pos = mining.select_negatives(cand, sims, labels[pool_ids], config.num_negatives,
                                      distinct_labels=config.distinct_negative_landmarks)
    negatives = pool_ids[neg_pos]
    tuples = mining.build_tuples(queries, pidx[pair_ids], negatives)
    # how hard the epoch's tuples are: squared distance query -> hardest negative, and how many candidates the
    # pool offered (invalid = same landmark only)
    d_neg = 2.0 - 2.0 * sims[:, 0]
    return tuples, {"mining/d_hardest_neg": float(np.mean(d_neg)),
                    "mining/pool_images": float(len(pool_ids))}


# ------------------------------------------------------------------------------------------- evaluation


def validation_map(describe_list: Callable[[list[np.ndarray]], np.ndarray], val_set, *,
                   max_queries: int = 500) -> float:
    """mAP (%) on a training-style split: each query ranks all other images; positives share its label."""
    from remap_jax.evaluate import compute_map, rank_database

    labels = np.asarray(val_set.labels)
    queries = np.unique(np.asarray(val_set.qidx))[:max_queries]
    vecs = describe_list([val_set.read(int(i)) for i in range(len(labels))])
    ranks = rank_database(vecs[queries], vecs)
    others = np.arange(len(labels))
    gnd = [{"ok": np.flatnonzero((labels == labels[q]) & (others != q)), "junk": np.array([q])}
           for q in queries]
    return float(compute_map(ranks, gnd)[0]) * 100.0


def make_list_describer(describe, variables_fn: Callable[[], Any], size: Sequence[int], *, batch_size: int,
                        mesh: Mesh) -> Callable[[list[np.ndarray]], np.ndarray]:
    """describe_fn(list of uint8 (H, W, 3) images) -> (N, D) for evaluation.

    Landscape images are resized to `size` = (h, w), portrait ones to (w, h): two static shapes.
    """
    h, w = int(size[0]), int(size[1])

    def describe_list(images: list[np.ndarray]) -> np.ndarray:
        if not images:
            raise ValueError("images: expected at least one image to describe, got an empty list")
        portrait = np.array([img.shape[0] > img.shape[1] for img in images])
        out: np.ndarray | None = None
        variables = variables_fn()
        for flag, shape in ((False, (h, w)), (True, (w, h))):
            idx = np.flatnonzero(portrait == flag)
            if len(idx) == 0:
                continue
            source = ImageSource(lambda i: images[i], shape, workers=2)
            vecs = describe_images(describe, variables, source, idx, batch_size=batch_size, mesh=mesh,
                                   desc="describe")
            source.close()
            if out is None:
                out = np.zeros((len(images), vecs.shape[1]), np.float32)
            out[idx] = vecs
        return out

    return describe_list


def evaluate_test_set(describe_list, test_set, *, out_dir: str | None = None, batch_size: int = 16) -> dict:
    """Revisited-protocol results (Easy/Medium/Hard mAP and mP@k, %) of the model on `test_set`.

    Uses `train.eval.run_eval` (which also writes results.json and a top-k PNG grid into `out_dir`).
    """
    from train.eval import run_eval

    return run_eval(describe_list, test_set, out_dir=out_dir, batch_size=batch_size)


def format_results(results: Mapping) -> str:
    try:
        from remap_jax.evaluate import format_revisited_table

        return format_revisited_table(results)
    except (ImportError, KeyError, TypeError):
        return json.dumps(results, indent=1, default=float)


def medium_map(results: Mapping) -> float:
    """Medium mAP (%) from an `evaluate_revisited` dict (accepts 'medium' / 'M' spellings)."""
    for key in ("medium", "Medium", "M"):
        if key in results:
            v = results[key]
            return float(v["mAP"] if isinstance(v, Mapping) else v)
    for key in ("medium_map", "mAP_medium", "M_mAP"):
        if key in results:
            return float(results[key])
    raise KeyError(f"results: no Medium mAP entry among {sorted(results)}")


# ------------------------------------------------------------------------------------------ checkpoints


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint whose structure does not match the current config."""


class Checkpoints:
    """Orbax CheckpointManager over `workdir/checkpoints`: train state + mined tuples + loop position."""

    def __init__(self, directory: str, keep: int):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, tuples: np.ndarray, meta: dict) -> None:
        ocp = self._ocp
        tree = {"state": _state_dict(state), "tuples": np.asarray(tuples)}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                        meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, template: TrainState, tuples_shape: tuple[int, int]):
        ocp = self._ocp
        target = {"state": _state_dict(template), "tuples": np.zeros(tuples_shape, np.int64)}
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                     meta=ocp.args.JsonRestore()))
        except ValueError as e:  # Orbax: saved tree / shapes differ from this run's
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.manager.directory} was written by a run with a different "
                "model, optimiser or batch layout than this config, so it cannot be resumed; use a new "
                f"--workdir (or delete that one) to start afresh. Orbax said: {str(e)[:600]}"
            ) from e
        from flax import serialization

        state = serialization.from_state_dict(template, out["state"]["state"])
        return state, np.asarray(out["state"]["tuples"]), dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _state_dict(state: TrainState) -> dict:
    from flax import serialization

    return serialization.to_state_dict(state)


# ---------------------------------------------------------------------------------------------- metrics


class MetricWriter:
    """Scalars to TensorBoard event files in `logdir` (process 0 only; no-op elsewhere)."""

    def __init__(self, logdir: str):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self._writer = EventFileWriter(logdir)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                               summary=summary_pb2.Summary(value=values)))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


# ------------------------------------------------------------------------------------------------ main


def export_config(config: ml_collections.ConfigDict) -> dict:
    """What `remap_jax.Extractor.from_checkpoint` needs to rebuild the model."""
    m = config.model
    return {"arch": m.arch, "taps": list(m.taps), "head": m.head, "levels": m.levels,
            "include_global": m.include_global, "whiten": m.whiten, "out_dim": m.out_dim, "p_init": m.p_init,
            "dtype": m.dtype, "image_size": list(config.test_image_size), "scales": [1.0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, model=None, training_set=None,
                       test_set=None, step_hook: Callable[[int], None] | None = None,
                       export_fn: Callable[[str, dict, dict], None] | None = None) -> dict:
    """Train per `config` in `workdir` (resuming from its latest checkpoint) and evaluate.

    Args:
      config: a config from train/configs (validated here before any compute).
      workdir: checkpoints/, tensorboard/, export/ and the evaluation json files go here.
      model, training_set, test_set: override what the config would build/load (tests, notebooks).
      step_hook: called with the global step after each step (tests use it to simulate a crash).
      export_fn: `(path, export_config, variables)` writer of the best model; default
        `remap_jax.model.save_exported`.
    Returns:
      summary dict: final step, last loss, best validation mAP and test results before/after (if evaluated).
    """
    validate_config(config)
    if config.distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize()
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0

    if training_set is None:
        from remap_jax.data import load_training_set

        training_set = load_training_set(config.dataset, data_dir=config.data_dir or None)
    if test_set is None and config.test_dataset:
        from remap_jax.data import load_test_set

        test_set = load_test_set(config.test_dataset, data_dir=config.data_dir or None)
    if len(np.asarray(training_set.qidx)) == 0:
        raise ValueError(f"dataset {config.dataset!r}: no (query, positive) pairs to train on")
    if model is None:
        model = build_model(config)
    if export_fn is None:
        from remap_jax.model import save_exported as export_fn

    mesh = make_mesh()
    n_dev = mesh.devices.size
    data_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    tuples_per_epoch = min(config.queries_per_epoch, len(np.asarray(training_set.qidx)))
    steps_per_epoch = tuples_per_epoch // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"config.batch_size = {config.batch_size}: larger than the {tuples_per_epoch} "
                         f"(query, positive) pairs available per epoch")
    total_steps = steps_per_epoch * config.num_epochs
    updates_per_epoch = max(1, steps_per_epoch // config.grad_accum_steps)
    padded_batch = pad_to_multiple(config.batch_size, n_dev)
    tuple_len = 2 + config.num_negatives

    variables = init_variables(model, config, jax.random.key(config.seed))
    check_eval_shapes(model, variables, config)
    check_frozen_blocks(config, variables["params"])
    tx, lr_schedule = make_optimizer(config, variables["params"], updates_per_epoch)
    state = jax.device_put(create_train_state(variables, tx), replicated)
    del variables
    frozen = frozen_mask(config, state.params)
    train_step = make_train_step(model, tx, loss=config.loss, margin=config.margin, mesh=mesh,
                                 frozen=frozen if any(jax.tree_util.tree_leaves(frozen)) else None)
    describe = make_describe_fn(model, mesh)

    def current_variables():
        return {"params": state.params, **state.model_state}

    eval_describe = make_list_describer(describe, current_variables, config.test_image_size,
                                        batch_size=config.describe_batch_size, mesh=mesh)
    source = ImageSource(training_set.read, config.image_size, cache=config.cache_images,
                         workers=config.num_workers)
    ckpt = Checkpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    writer = MetricWriter(os.path.join(workdir, "tensorboard"))
    export_dir = os.path.join(workdir, "export")
    summary: dict[str, Any] = {}

    def save_checkpoint(step: int, meta: dict) -> None:
        if not bool(_all_finite(state.params)):
            raise NonFiniteLossError(
                f"parameters are NaN/inf after step {step}; training stopped without saving them. The last "
                f"good checkpoint is step {ckpt.latest_step()} in {workdir}/checkpoints")
        ckpt.save(step, state, tuples, meta)

    def say(msg: str) -> None:
        if is_main:
            print(msg, flush=True)

    # ---- resume
    meta = {"epoch": 0, "step_in_epoch": 0, "best_val_map": None, "best_step": None}
    tuples = None
    latest = ckpt.latest_step()
    if latest is not None:
        tuples_shape = (steps_per_epoch * config.batch_size, tuple_len)
        state, saved_tuples, meta = ckpt.restore(latest, state, tuples_shape)
        state = jax.device_put(state, replicated)
        if meta["step_in_epoch"] < steps_per_epoch:
            tuples = saved_tuples
        else:
            meta = {**meta, "epoch": meta["epoch"] + 1, "step_in_epoch": 0}
        say(f"resumed from {workdir}/checkpoints step {latest} (epoch {meta['epoch']}, "
            f"step {meta['step_in_epoch']} of {steps_per_epoch})")
    step = int(state.step)

    if test_set is not None and config.eval_before_training and step == 0:
        before = evaluate_test_set(eval_describe, test_set, out_dir=os.path.join(workdir, "eval_before"),
                                   batch_size=config.describe_batch_size)
        _write_json(os.path.join(workdir, "eval_before.json"), before, is_main)
        say(f"test set {config.test_dataset!r} before training:\n{format_results(before)}")
        summary["test_before"] = before

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not is_main)
    window_images, window_t0 = 0, time.perf_counter()
    loss_value = float("nan")
    try:
        for epoch in range(meta["epoch"], config.num_epochs):
            start = meta["step_in_epoch"] if epoch == meta["epoch"] else 0
            if tuples is None or start == 0:
                tuples, stats = mine_epoch(describe, current_variables(), source, training_set, config, epoch,
                                           mesh=mesh)
                tuples = tuples[: steps_per_epoch * config.batch_size]
                writer.write(step, stats)
            weights = np.zeros((padded_batch,), np.float32)
            weights[: config.batch_size] = 1.0

            def batch_ids(i: int, tuples=tuples) -> np.ndarray:
                rows = tuples[i * config.batch_size:(i + 1) * config.batch_size]
                return np.concatenate([rows, np.repeat(rows[-1:], padded_batch - len(rows), axis=0)])

            pending = source.prefetch(batch_ids(start))
            for i in range(start, steps_per_epoch):
                images = pending.result()
                if i + 1 < steps_per_epoch:
                    pending = source.prefetch(batch_ids(i + 1))
                state, metrics = train_step(state, to_global_batch(images, data_sharding),
                                            to_global_batch(weights, data_sharding))
                metrics = jax.device_get(metrics)
                step += 1
                loss_value = float(metrics["loss"])
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(
                        f"loss is {loss_value} at step {step} (epoch {epoch}); training stopped. The last "
                        f"good checkpoint is step {ckpt.latest_step()} in {workdir}/checkpoints; lower the "
                        f"learning rate or check the data before resuming")
                window_images += config.batch_size * tuple_len
                bar.update(1)
                if step % config.log_every_steps == 0 or step == total_steps:
                    now = time.perf_counter()
                    lr = float(lr_schedule(step // config.grad_accum_steps))
                    scalars = {"train/loss": loss_value, "train/active_triplets": float(metrics["active"]),
                               "train/grad_norm": float(metrics["grad_norm"]), "train/lr": lr,
                               "train/images_per_s": window_images / max(now - window_t0, 1e-9),
                               "train/epoch": epoch}
                    writer.write(step, scalars)
                    bar.set_postfix(loss=f"{loss_value:.4f}",
                                    active=f"{scalars['train/active_triplets']:.2f}", lr=f"{lr:.2e}",
                                    img_s=f"{scalars['train/images_per_s']:.1f}")
                    window_images, window_t0 = 0, now
                if step_hook is not None:
                    step_hook(step)
                if step % config.checkpoint_every_steps == 0 and i + 1 < steps_per_epoch:
                    save_checkpoint(step, {**meta, "epoch": epoch, "step_in_epoch": i + 1})
            # ---- end of epoch: validation, best export, checkpoint
            meta = {**meta, "epoch": epoch, "step_in_epoch": steps_per_epoch}
            val = getattr(training_set, "val", None)
            if config.eval_every_epochs and (epoch + 1) % config.eval_every_epochs == 0 and val is not None:
                val_map = validation_map(eval_describe, val)
                writer.write(step, {"val/mAP": val_map})
                say(f"epoch {epoch + 1}/{config.num_epochs}: validation mAP {val_map:.2f}")
                if meta["best_val_map"] is None or val_map > meta["best_val_map"]:
                    meta = {**meta, "best_val_map": val_map, "best_step": step}
                    if is_main:
                        export_fn(export_dir, export_config(config), jax.device_get(current_variables()))
            save_checkpoint(step, meta)
        bar.close()
    finally:
        ckpt.wait()
        source.close()

    if meta["best_step"] is None or not os.path.exists(export_dir):  # no validation split: export the last
        if is_main:
            export_fn(export_dir, export_config(config), jax.device_get(current_variables()))
        meta = {**meta, "best_step": step}
    summary.update(step=step, loss=loss_value, best_val_map=meta["best_val_map"], best_step=meta["best_step"])

    if test_set is not None:
        final_vars = current_variables()
        if meta["best_step"] != step:
            from remap_jax.model import load_exported

            final_vars = jax.device_put(load_exported(export_dir)[1], replicated)
        final_describe = make_list_describer(describe, lambda: final_vars, config.test_image_size,
                                             batch_size=config.describe_batch_size, mesh=mesh)
        after = evaluate_test_set(final_describe, test_set, out_dir=os.path.join(workdir, "eval_after"),
                                  batch_size=config.describe_batch_size)
        _write_json(os.path.join(workdir, "eval_after.json"), after, is_main)
        summary["test_after"] = after
        say(f"test set {config.test_dataset!r} after training (model of step {meta['best_step']}):\n"
            f"{format_results(after)}")
        before_path = os.path.join(workdir, "eval_before.json")
        if os.path.exists(before_path):
            with open(before_path) as f:
                summary["test_before"] = json.load(f)
            try:
                say(f"Medium mAP: {medium_map(summary['test_before']):.2f} -> {medium_map(after):.2f}")
            except KeyError:
                pass
    writer.close()
    ckpt.close()
    return summary


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _write_json(path: str, obj, is_main: bool) -> None:
    if not is_main:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")
