"""Triplet and contrastive losses over (query, positive, negatives) tuples, checked against hand values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remap_jax.fit import losses


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _tuples():
    # tuple 0: q=e0, p at 60 degrees, negatives e1 (orthogonal) and -e0 (opposite)
    # tuple 1: q=e1, p=e1 (identical), negatives close to q (hard) and e0
    t0 = _unit([[1, 0, 0], [0.5, np.sqrt(3) / 2, 0], [0, 1, 0], [-1, 0, 0]])
    t1 = _unit([[0, 1, 0], [0, 1, 0], [0.1, 1, 0], [1, 0, 0]])
    return jnp.asarray(np.stack([t0, t1]))


def test_distances_by_hand():
    d_pos, d_neg = losses.tuple_distances(_tuples())
    np.testing.assert_allclose(d_pos, [1.0, 0.0], atol=1e-6)
    near = 2 - 2 * (1 / np.sqrt(1.01))
    np.testing.assert_allclose(d_neg, [[2.0, 4.0], [near, 2.0]], atol=1e-6)


def test_triplet_loss_by_hand():
    margin = 0.5
    near = 2 - 2 * (1 / np.sqrt(1.01))
    hinges = np.array([[max(0, 1 - 2 + margin), max(0, 1 - 4 + margin)], [max(0, 0 - near + margin), 0.0]])
    loss, active = losses.triplet_loss(_tuples(), margin)
    np.testing.assert_allclose(loss, hinges.mean(), rtol=1e-5)
    np.testing.assert_allclose(active, 1 / 4)  # only the hard negative of tuple 1 is inside the margin
    loss2, active2 = losses.triplet_loss(_tuples(), 2.5)
    np.testing.assert_allclose(active2, 3 / 4)
    assert loss2 > loss


def test_contrastive_loss_by_hand():
    margin = 0.7
    near = np.sqrt(2 - 2 * (1 / np.sqrt(1.01)))
    t0 = 0.5 * 1.0 + 0.5 * (max(0, margin - np.sqrt(2)) ** 2 + max(0, margin - 2) ** 2)
    t1 = 0.0 + 0.5 * (max(0, margin - near) ** 2 + max(0, margin - np.sqrt(2)) ** 2)
    loss, active = losses.contrastive_loss(_tuples(), margin)
    np.testing.assert_allclose(loss, (t0 + t1) / 2, rtol=1e-5)
    np.testing.assert_allclose(active, 1 / 4)


@pytest.mark.parametrize("kind", ["triplet", "contrastive"])
def test_zero_weight_tuples_do_not_count(kind):
    x = _tuples()
    padded = jnp.concatenate([x, x[:1]])  # a padding tuple (repeat of tuple 0) with weight 0
    ref = losses.tuple_loss(x[1:], kind, 0.5)
    got = losses.tuple_loss(padded[1:], kind, 0.5, weights=jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.parametrize("kind", ["triplet", "contrastive"])
def test_gradient_finite_when_negative_equals_query(kind):
    x = _tuples().at[0, 2].set(_tuples()[0, 0])
    g = jax.grad(lambda d: losses.tuple_loss(d, kind, 0.5)[0])(x)
    assert np.all(np.isfinite(np.asarray(g)))
    # the positive is pulled towards the query
    assert float(jnp.sum(g[0, 1] * (x[0, 0] - x[0, 1]))) < 0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"descriptors: expected rank 3 \(B, T, D\)"):
        losses.triplet_loss(jnp.zeros((4, 8)))
    with pytest.raises(ValueError, match="T = 2 \\+ num_negatives >= 3"):
        losses.triplet_loss(jnp.zeros((4, 2, 8)))
    with pytest.raises(ValueError, match="loss: expected one of"):
        losses.tuple_loss(_tuples(), "arcface")
