"""The trainer: jit step over a Mesh (8 devices == 1 device), optimiser groups, accumulation, end-to-end
training with mining, checkpoint/resume after a crash, NaN stop, metrics and export (its input pipeline:
test_train_input.py).

A tiny stand-in model (two convs + a 4-region alpha-weighted head with a whitening layer, the same parameter
layout as `RetrievalModel`) and tiny random data keep this fast; the real backbones and heads are covered by
their own tests and by the demo job. About 430 lines: the stand-in model and fake sets live here because
test_train_model, test_train_input and tests/train_worker.py import them.
"""

import glob
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from train import checkpoints, loop, optim, validate
from train import step as train_step
from train.configs.base import get_base_config

SIZE = 32


class TinyBackbone(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = (x.astype(jnp.float32) / 255.0 - 0.5) / 0.25  # uint8 pixels in, like RetrievalModel
        x = nn.Conv(8, (3, 3), strides=2, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn1")(x)
        x = nn.relu(x)
        return nn.relu(nn.Conv(16, (3, 3), strides=2, name="conv2")(x))


class TinyHead(nn.Module):
    """Quadrant max-pool -> L2 -> alpha-weighted sum -> whitening dense -> L2 (REMAP in miniature)."""

    @nn.compact
    def __call__(self, f):
        h, w = f.shape[1] // 2, f.shape[2] // 2
        regions = jnp.stack([f[:, :h, :w].max((1, 2)), f[:, :h, w:].max((1, 2)), f[:, h:, :w].max((1, 2)),
                             f[:, h:, w:].max((1, 2))], axis=1)
        regions = regions / (jnp.linalg.norm(regions, axis=-1, keepdims=True) + 1e-6)
        alpha = self.param("alpha", nn.initializers.ones, (4,))
        v = nn.Dense(f.shape[-1], name="whiten")(jnp.einsum("brc,r->bc", regions, alpha))
        return v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + 1e-6)


class TinyModel(nn.Module):
    @nn.compact
    def __call__(self, images):
        return TinyHead(name="head")(TinyBackbone(name="backbone")(images))


class FakeTrainingSet:
    """`num_labels` landmarks, `per_label` noisy views of a random pattern each; pairs within a landmark."""

    def __init__(self, num_labels=12, per_label=4, seed=0, val=True):
        rng = np.random.default_rng(seed)
        bases = rng.integers(0, 200, (num_labels, SIZE, SIZE, 3))
        self.labels = np.repeat(np.arange(num_labels), per_label)
        noise = rng.integers(-40, 40, (len(self.labels), SIZE, SIZE, 3))
        self._images = np.clip(bases[self.labels] + noise, 0, 255).astype(np.uint8)
        q, p = np.meshgrid(np.arange(per_label), np.arange(per_label), indexing="ij")
        keep = q != p
        offsets = np.arange(num_labels)[:, None] * per_label
        self.qidx = (offsets + q[keep][None]).ravel()
        self.pidx = (offsets + p[keep][None]).ravel()
        self.num_images = len(self.labels)
        self.val = FakeTrainingSet(4, 3, seed + 1, val=False) if val else None

    def read(self, i):
        return self._images[i]


class FakeTestSet:
    def __init__(self, seed=2):
        self._train = FakeTrainingSet(5, 4, seed, val=False)
        self.num_queries = 5
        self.num_index = 15
        self._q = [self._train.read(4 * k) for k in range(5)]
        self._x = [self._train.read(4 * k + j) for k in range(5) for j in (1, 2, 3)]
        self.gnd = [{"easy": [3 * k, 3 * k + 1], "hard": [3 * k + 2], "junk": []} for k in range(5)]

    def read_query(self, i):
        return self._q[i]

    def read_index(self, i):
        return self._x[i]


def tiny_config(**overrides):
    c = get_base_config()
    c.dataset = "fake"  # training/test sets are passed to train_and_evaluate
    c.test_dataset = ""  # test_set=None: no test evaluation (nothing is loaded)
    c.model.arch = ""  # custom model passed to train_and_evaluate
    c.model.taps = ("tiny",)
    c.image_size = (SIZE, SIZE)
    c.test_image_size = (SIZE, SIZE)
    c.cache_images = True
    c.num_workers = 2
    c.num_negatives = 2
    c.queries_per_epoch = 16
    c.pool_size = 32
    c.mining_candidates = 8
    c.margin = 0.5
    c.num_epochs = 2
    c.batch_size = 4
    c.learning_rate = 1e-2
    c.lr_mult_alpha = 1.0
    c.lr_mult_head = 1.0
    c.weight_decay = 0.0
    c.schedule = "cosine"
    c.warmup_steps = 2
    c.log_every_steps = 2
    c.eval_every_epochs = 1
    c.checkpoint_every_steps = 3
    c.keep_checkpoints = 2
    c.describe_batch_size = 16
    for k, v in overrides.items():
        c[k] = v
    return c


def _variables(seed=0):
    return TinyModel().init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3)))


def _batch(b=8, t=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (b, t, SIZE, SIZE, 3), dtype=np.uint8)


def _step_once(mesh, config, images, weights, steps=1):
    variables = _variables()
    tx, _ = optim.make_optimizer(config, variables["params"], updates_per_epoch=10)
    state = jax.device_put(train_step.create_train_state(variables, tx),
                           jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    step = train_step.make_train_step(TinyModel(), tx, loss="triplet", margin=0.5, mesh=mesh)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    out = []
    for _ in range(steps):
        state, metrics = step(state, train_step.to_global_batch(images, sharding),
                              train_step.to_global_batch(weights, sharding))
        out.append(jax.device_get(metrics))
    return jax.device_get(state.params), out


def test_eight_devices_match_one_device():
    assert jax.device_count() == 8, "tests/conftest.py simulates 8 CPU devices"
    config = tiny_config(optimizer="sgd", learning_rate=0.5, warmup_steps=0, schedule="constant")
    images, weights = _batch(), np.ones((8,), np.float32)
    mesh8 = Mesh(np.array(jax.devices()), ("data",))
    mesh1 = Mesh(np.array(jax.devices()[:1]), ("data",))
    p8, m8 = _step_once(mesh8, config, images, weights, steps=2)
    p1, m1 = _step_once(mesh1, config, images, weights, steps=2)
    for a, b in zip(m8, m1, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["active"], b["active"])
    assert m8[0]["loss"] != m8[1]["loss"]  # the update changed the model
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p8, p1)
    p0 = jax.device_get(_variables()["params"])
    changed = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), p8, p0)
    assert changed["backbone"]["conv1"]["kernel"] > 0 and changed["head"]["alpha"] > 0


def test_train_step_shards_batch_and_replicates_state():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    config = tiny_config()
    variables = _variables()
    tx, _ = optim.make_optimizer(config, variables["params"], updates_per_epoch=10)
    step = train_step.make_train_step(TinyModel(), tx, loss="triplet", margin=0.5, mesh=mesh)
    state = train_step.create_train_state(variables, tx)
    bn_mean = np.array(variables["batch_stats"]["backbone"]["bn1"]["mean"])
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    images = train_step.to_global_batch(_batch(), data)
    assert len(images.addressable_shards) == 8 and images.addressable_shards[0].data.shape[0] == 1
    new_state, _ = step(state, images, np.ones((8,), np.float32))
    kernel = new_state.params["backbone"]["conv1"]["kernel"]
    assert kernel.sharding.is_fully_replicated
    # batch statistics are frozen: never updated by a step
    np.testing.assert_array_equal(new_state.model_state["batch_stats"]["backbone"]["bn1"]["mean"], bn_mean)


def test_padding_tuples_do_not_change_the_step():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    config = tiny_config(optimizer="sgd", learning_rate=0.5, warmup_steps=0, schedule="constant")
    images = _batch(b=8)
    weights = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    padded = images.copy()
    padded[5:] = images[4]  # what the trainer does: repeat the last real tuple
    mesh1 = Mesh(np.array(jax.devices()[:1]), ("data",))
    p_pad, m_pad = _step_once(mesh, config, padded, weights)
    p_ref, m_ref = _step_once(mesh1, config, images[:5], np.ones((5,), np.float32))
    np.testing.assert_allclose(m_pad[0]["loss"], m_ref[0]["loss"], rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p_pad, p_ref)


def test_gradient_accumulation_equals_full_batch():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    base = dict(optimizer="sgd", learning_rate=0.5, warmup_steps=0, schedule="constant", momentum=0.0)
    images, w = _batch(b=16), np.ones((16,), np.float32)
    p_full, _ = _step_once(mesh, tiny_config(**base), images, w)
    config = tiny_config(grad_accum_steps=2, **base)
    variables = _variables()
    tx, _ = optim.make_optimizer(config, variables["params"], updates_per_epoch=10)
    alpha0 = np.array(variables["params"]["head"]["alpha"])
    state = train_step.create_train_state(variables, tx)
    step = train_step.make_train_step(TinyModel(), tx, loss="triplet", margin=0.5, mesh=mesh)
    state, _ = step(state, images[:8], w[:8])
    np.testing.assert_array_equal(jax.device_get(state.params)["head"]["alpha"], alpha0)  # no update yet
    state, _ = step(state, images[8:], w[8:])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                           jax.device_get(state.params), p_full)


def test_param_groups_and_frozen_group():
    params = _variables()["params"]
    labels = optim.param_labels(params)
    assert labels["head"]["alpha"] == "alpha"
    assert labels["head"]["whiten"]["kernel"] == "whitening"
    assert set(jax.tree_util.tree_leaves(labels["backbone"])) == {"backbone"}
    config = tiny_config(lr_mult_whitening=0.0, lr_mult_alpha=100.0)
    tx, schedule = optim.make_optimizer(config, params, updates_per_epoch=10)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)  # pushes every parameter down
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["head"]["whiten"]["kernel"], params["head"]["whiten"]["kernel"])
    assert np.all(np.asarray(new["head"]["alpha"]) >= 0)  # alpha kept non-negative
    assert float(schedule(0)) == 0.0 and float(schedule(2)) == pytest.approx(config.learning_rate)


def _one_step_with_frozen_mask(config, variables):
    """One contrastive train step on 1 device with `config`'s frozen mask -> (params after, metrics)."""
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    frozen = optim.frozen_mask(config, variables["params"])
    tx, _ = optim.make_optimizer(config, variables["params"], updates_per_epoch=10)
    step = train_step.make_train_step(TinyModel(), tx, loss="contrastive", margin=0.7, mesh=mesh,
                                      frozen=frozen)
    state = train_step.create_train_state(variables, tx)
    state, metrics = step(state, _batch(b=4), np.ones((4,), np.float32))
    return jax.device_get(state.params), metrics


def test_frozen_backbone_blocks_freeze_only_the_named_modules():
    config = tiny_config(frozen_backbone_blocks=("conv1", "bn"), optimizer="sgd", learning_rate=0.5,
                         warmup_steps=0, schedule="constant")
    variables = _variables()
    optim.check_frozen_blocks(config, variables["params"])
    labels = optim.param_labels(variables["params"], config.frozen_backbone_blocks)
    assert set(jax.tree_util.tree_leaves(labels["backbone"]["conv1"])) == {"frozen"}
    assert set(jax.tree_util.tree_leaves(labels["backbone"]["bn1"])) == {"frozen"}
    assert set(jax.tree_util.tree_leaves(labels["backbone"]["conv2"])) == {"backbone"}
    before = jax.device_get(variables["params"])
    after, _ = _one_step_with_frozen_mask(config, variables)
    np.testing.assert_array_equal(after["backbone"]["conv1"]["kernel"], before["backbone"]["conv1"]["kernel"])
    assert np.abs(after["backbone"]["conv2"]["kernel"] - before["backbone"]["conv2"]["kernel"]).max() > 0


def test_frozen_block_names_do_not_match_inside_a_number():
    # "blocks_1" once froze blocks_10..blocks_15 too (a plain string prefix), so a config freezing blocks 0-10
    # of EfficientNet-Lite0 trained none of its blocks
    names = [f"blocks_{i}" for i in range(16)] + ["head", "stem"]
    frozen = [n for n in names if any(optim.names_module(e, n) for e in ("stem", "blocks_1", "blocks_2"))]
    assert frozen == ["blocks_1", "blocks_2", "stem"]
    assert [n for n in names if optim.names_module("blocks_", n)] == names[:16]
    assert optim.names_module("bn", "bn1") and optim.names_module("layer", "layer4")
    assert not optim.names_module("layer1", "layer10") and optim.names_module("layer1", "layer1")
    params = {"backbone": {n: {"kernel": np.zeros(1)} for n in names}}
    labels = optim.param_labels(params, tuple(f"blocks_{i}" for i in range(11)))
    assert [labels["backbone"][f"blocks_{i}"]["kernel"] for i in (0, 10, 11, 15)] == [
        "frozen", "frozen", "backbone", "backbone"]


def test_frozen_backbone_blocks_must_name_backbone_modules():
    params = _variables()["params"]
    with pytest.raises(ValueError, match=r"frozen_backbone_blocks: 'layer1' matches no module .*'conv1'"):
        optim.check_frozen_blocks(tiny_config(frozen_backbone_blocks=("conv1", "layer1")), params)
    with pytest.raises(ValueError, match="config.frozen_backbone_blocks"):
        validate.validate_config(tiny_config(frozen_backbone_blocks=("conv1", "")))


@pytest.mark.parametrize("name", ["exponential", "cosine", "constant"])
def test_schedules_warm_up_then_decay(name):
    config = tiny_config(schedule=name, warmup_steps=4, num_epochs=5, decay_per_epoch=0.1)
    s = optim.make_schedule(config, 1.0, updates_per_epoch=10)
    assert float(s(0)) == 0.0 and float(s(2)) == pytest.approx(0.5)
    assert float(s(4)) == pytest.approx(1.0)
    if name == "constant":
        assert float(s(49)) == pytest.approx(1.0)
    else:
        assert float(s(49)) < 0.7


def test_config_values_are_checked_before_compute():
    config = tiny_config(margin=-1.0, optimizer="lamb")
    config.model.head = "netvlad"
    with pytest.raises(ValueError) as e:
        validate.validate_config(config)
    msg = str(e.value)
    assert "config.margin = -1.0: expected > 0" in msg
    assert "config.optimizer = 'lamb'" in msg and "config.model.head = 'netvlad'" in msg


def _run(workdir, config=None, **kw):
    return loop.train_and_evaluate(config or tiny_config(), str(workdir), model=TinyModel(),
                                      training_set=kw.pop("training_set", FakeTrainingSet()),
                                      test_set=kw.pop("test_set", FakeTestSet()), export_fn=_export, **kw)


def _export(path, config, variables):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    np.savez(os.path.join(path, "params.npz"),
             **{"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
                for p, v in jax.tree_util.tree_leaves_with_path(variables["params"])})


def _checkpoint_steps(workdir):
    paths = glob.glob(os.path.join(str(workdir), "checkpoints", "[0-9]*"))
    return sorted(int(os.path.basename(p)) for p in paths)


def _final_params(workdir):
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(os.path.join(str(workdir), "checkpoints"))
    step = mngr.latest_step()
    tree = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    mngr.close()
    return step, tree["state"]["params"], tree["tuples"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    summary = _run(workdir)
    return workdir, summary


def test_end_to_end_training_outputs(uninterrupted):
    workdir, summary = uninterrupted
    assert summary["step"] == 8  # 2 epochs x (16 tuples / 4)
    assert np.isfinite(summary["loss"]) and summary["best_val_map"] is not None
    for name in ("eval_before.json", "eval_after.json", "export/config.json", "export/params.npz"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert summary["test_before"]["medium"]["mAP"] >= 0 and "medium" in summary["test_after"]
    ckpts = _checkpoint_steps(workdir)
    assert ckpts[-1] == 8 and len(ckpts) <= 2  # keep-last-K
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/active_triplets", "train/lr", "train/images_per_s", "val/mAP"} <= tags
    _, _, tuples = _final_params(workdir)
    labels = FakeTrainingSet().labels
    tuples = np.asarray(tuples)
    assert tuples.shape == (16, 4)
    assert np.all(labels[tuples[:, 0]] == labels[tuples[:, 1]])  # query and positive: same landmark
    assert np.all(labels[tuples[:, 2:]] != labels[tuples[:, :1]])  # negatives: other landmarks


def test_resume_after_crash_gives_the_same_final_parameters(uninterrupted, tmp_path):
    full_dir, _ = uninterrupted

    class Crash(RuntimeError):
        pass

    def crash_at_5(step):  # checkpoints at steps 3 (periodic) and 4 (end of epoch 0): dies mid-epoch 1
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        _run(tmp_path, step_hook=crash_at_5, test_set=None)
    ckpts = _checkpoint_steps(tmp_path)
    assert ckpts[-1] == 4
    summary = _run(tmp_path, test_set=None)
    assert summary["step"] == 8
    step_a, params_a, tuples_a = _final_params(full_dir)
    step_b, params_b, tuples_b = _final_params(tmp_path)
    assert step_a == step_b == 8
    np.testing.assert_array_equal(tuples_a, tuples_b)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           params_a, params_b)


def test_resuming_a_checkpoint_of_another_config_fails_clearly(tmp_path):
    class Crash(RuntimeError):
        pass

    def crash_at_2(step):
        if step == 2:
            raise Crash

    with pytest.raises(Crash):
        _run(tmp_path, tiny_config(checkpoint_every_steps=1, optimizer="adam"), step_hook=crash_at_2,
             test_set=None)
    assert _checkpoint_steps(tmp_path)
    mismatch = r"different model, optimiser .* new --workdir"
    with pytest.raises(checkpoints.CheckpointMismatchError, match=mismatch):
        _run(tmp_path, tiny_config(optimizer="sgd", momentum=0.0), test_set=None)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # Adam steps by ~lr whatever the gradient: weights of 1e30 overflow the next forward pass to NaN
    config = tiny_config(learning_rate=1e30, warmup_steps=0, schedule="constant", checkpoint_every_steps=1,
                         lr_mult_alpha=0.0, num_epochs=1, eval_every_epochs=0)
    expected = r"loss is nan at step 2 .*last good checkpoint is step 1"
    with pytest.raises(loop.NonFiniteLossError, match=expected):
        _run(tmp_path, config, test_set=None)
    ckpts = _checkpoint_steps(tmp_path)
    assert ckpts == [1]


def test_frozen_backbone_gets_no_gradient_and_no_update():
    config = tiny_config(lr_mult_backbone=0.0, optimizer="sgd", learning_rate=0.5, warmup_steps=0,
                         schedule="constant")
    variables = _variables()
    before = jax.device_get(variables["params"])
    frozen = optim.frozen_mask(config, variables["params"])
    assert all(jax.tree_util.tree_leaves(frozen["backbone"]))
    assert not any(jax.tree_util.tree_leaves(frozen["head"]))
    after, metrics = _one_step_with_frozen_mask(config, variables)
    np.testing.assert_array_equal(after["backbone"]["conv1"]["kernel"], before["backbone"]["conv1"]["kernel"])
    assert np.abs(after["head"]["whiten"]["kernel"] - before["head"]["whiten"]["kernel"]).max() > 0
    assert np.isfinite(metrics["grad_norm"])
