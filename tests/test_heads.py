import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from remap_jax.nn import heads
from remap_jax.nn.regions import rmac_regions

LAYERS = ("layer4.1", "layer4.2")


def make_features(seed=0, shape=(3, 6, 8, 16)):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(LAYERS))
    return {name: jax.nn.relu(jax.random.normal(k, shape)) for name, k in zip(LAYERS, keys, strict=True)}


def l2(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def rmac_by_hand(fmap):
    """Numpy R-MAC of one layer: sum over regions of L2(region max)."""
    fmap = np.asarray(fmap)
    regions = rmac_regions(fmap.shape[1], fmap.shape[2])
    pooled = np.stack([fmap[:, y : y + h, x : x + w].max(axis=(1, 2)) for y, x, h, w in regions], 1)
    return l2(pooled).sum(axis=1)


def test_remap_with_unit_alpha_and_identity_whitening_is_multilayer_rmac():
    features = make_features()
    head = heads.REMAPHead(LAYERS)
    variables = head.init(jax.random.PRNGKey(0), features)
    out = np.asarray(head.apply(variables, features))
    expected = l2(np.concatenate([rmac_by_hand(features[name]) for name in LAYERS], axis=1))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_shapes_unit_norm_params_and_determinism():
    features = make_features()
    head = heads.REMAPHead(LAYERS, out_dim=12)
    variables = head.init(jax.random.PRNGKey(0), features)
    shapes = jax.tree_util.tree_map(jnp.shape, variables["params"])
    assert shapes == {
        "stream_layer4_1": {"alpha": (40,)},
        "stream_layer4_2": {"alpha": (40,)},
        "whiten": {"kernel": (32, 12), "bias": (12,)},
    }
    a = head.apply(variables, features)
    b = jax.jit(head.apply)(variables, features)
    assert a.shape == (3, 12) and a.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(a), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    c = head.apply(head.init(jax.random.PRNGKey(7), features), features)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))  # no randomness in the initialisation


def test_alpha_and_whitening_initialisation_are_used():
    features = make_features()
    rng = np.random.default_rng(0)
    alpha = {name: rng.uniform(0, 2, 40).astype(np.float32) for name in LAYERS}
    w = rng.normal(size=(10, 32)).astype(np.float32)
    b = rng.normal(size=(10,)).astype(np.float32)
    head = heads.REMAPHead(LAYERS, alpha_init=alpha, whitening_init=(w, b))
    variables = head.init(jax.random.PRNGKey(0), features)
    np.testing.assert_array_equal(variables["params"]["stream_layer4_1"]["alpha"], alpha["layer4.1"])
    out = np.asarray(head.apply(variables, features))
    regions = heads.region_descriptors(features, LAYERS)
    pooled = np.concatenate([np.einsum("brc,r->bc", np.asarray(regions[n]), alpha[n]) for n in LAYERS], 1)
    np.testing.assert_allclose(out, l2(pooled @ w.T + b), rtol=1e-4, atol=1e-5)


def test_zero_maps_give_no_nan_in_output_or_gradient():
    features = {name: jnp.zeros((2, 6, 8, 16)) for name in LAYERS}
    for head in (
        heads.REMAPHead(LAYERS),
        heads.GeM(LAYERS),
        heads.MAC(LAYERS),
        heads.SPoC(LAYERS),
        heads.RMAC(LAYERS),
    ):
        variables = head.init(jax.random.PRNGKey(0), features)
        out = head.apply(variables, features)
        grads = jax.grad(lambda v, h=head: h.apply(v, features).sum())(variables)
        assert np.isfinite(np.asarray(out)).all()
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


def test_alpha_stays_non_negative_after_an_update_that_pushes_it_negative():
    features = make_features()
    head = heads.REMAPHead(LAYERS)
    params = head.init(jax.random.PRNGKey(0), features)["params"]
    tx = optax.chain(optax.sgd(100.0), heads.nonnegative_alpha())
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)  # sgd step: alpha - 100 -> very negative
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    for name in LAYERS:
        alpha = np.asarray(new[heads.stream_name(name)]["alpha"])
        assert (alpha >= 0).all() and (alpha == 0).all()
    # Other parameters are not projected.
    assert (np.asarray(new["whiten"]["bias"]) == -100.0).all()
    # And the forward pass never sees a negative weight even if one is stored.
    stored = jax.tree_util.tree_map(lambda p: p, params)
    stored["stream_layer4_1"]["alpha"] = -jnp.ones(40)
    np.testing.assert_allclose(np.asarray(head.apply({"params": stored}, features)[:, :16]), 0.0, atol=1e-6)


def test_layers_with_the_same_size_share_one_pooling_call(monkeypatch):
    calls = []
    original = heads.roi_max_pool
    monkeypatch.setattr(heads, "roi_max_pool", lambda x, r: calls.append(x.shape) or original(x, r))
    features = make_features()
    features["layer3.5"] = jnp.ones((3, 12, 16, 4))
    heads.region_descriptors(features, LAYERS + ("layer3.5",))
    assert sorted(calls) == [(3, 6, 8, 32), (3, 12, 16, 4)]


def test_baselines_match_their_definitions():
    features = make_features()
    x = np.asarray(features["layer4.2"])
    expected = {
        heads.MAC: l2(x.max(axis=(1, 2))),
        heads.SPoC: l2(x.mean(axis=(1, 2))),
        heads.RMAC: l2(rmac_by_hand(x)),
        heads.GeM: l2(np.mean(np.maximum(x, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)),
    }
    for cls, want in expected.items():
        head = cls(("layer4.2",))
        variables = head.init(jax.random.PRNGKey(0), features)
        np.testing.assert_allclose(np.asarray(head.apply(variables, features)), want, rtol=1e-4, atol=1e-5)


def test_gem_p_is_learnable():
    features = make_features()
    head = heads.GeM(LAYERS, p_init=2.0)
    variables = head.init(jax.random.PRNGKey(0), features)
    assert float(variables["params"]["p"]) == 2.0
    target = jnp.roll(head.apply(variables, features), 1, axis=0)
    grad = jax.grad(lambda v: -(head.apply(v, features) * target).sum())(variables)
    assert float(jnp.abs(grad["params"]["p"])) > 0


def test_errors_name_the_problem():
    features = make_features()
    with pytest.raises(KeyError, match="missing layer"):
        heads.REMAPHead(("layer3.0",)).init(jax.random.PRNGKey(0), features)
    with pytest.raises(ValueError, match="alpha_init: expected 40 region weights"):
        heads.REMAPHead(LAYERS, alpha_init={"layer4.1": np.ones(7)}).init(jax.random.PRNGKey(0), features)
    with pytest.raises(ValueError, match="whitening_init"):
        heads.REMAPHead(LAYERS, whitening_init=(np.ones((4, 5)), np.ones(4))).init(
            jax.random.PRNGKey(0), features
        )
    with pytest.raises(ValueError, match="rank 4"):
        heads.MAC(("a",)).init(jax.random.PRNGKey(0), {"a": jnp.ones((2, 3))})
