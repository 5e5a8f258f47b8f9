"""Metric-learning losses over training tuples (query, positive, N negatives).

A batch of tuples is one array `descriptors` of shape (B, T, D) with T = 2 + N: index 0 is the query, index 1
its positive, indices 2.. the mined negatives. Descriptors are expected to be L2-normalised (the heads output
unit vectors), so squared Euclidean distances lie in [0, 4].

Both losses return `(loss, active_fraction)`: the scalar loss (float32, averaged so that the learning rate
does not depend on the batch size or on N) and the fraction of negatives that still contribute a gradient
(a useful training signal: it drops as the model separates the mined negatives).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["tuple_distances", "triplet_loss", "contrastive_loss", "tuple_loss", "LOSSES"]


def _check_tuples(descriptors) -> None:
    if descriptors.ndim != 3 or descriptors.shape[1] < 3:
        raise ValueError(
            "descriptors: expected rank 3 (B, T, D) with T = 2 + num_negatives >= 3 "
            f"(query, positive, negatives...), got shape {tuple(descriptors.shape)}"
        )


def tuple_distances(descriptors):
    """Squared Euclidean distances inside each tuple.

    Args:
      descriptors: (B, T, D), T = 2 + N; [:, 0] queries, [:, 1] positives, [:, 2:] negatives.
    Returns:
      (d_pos (B,), d_neg (B, N)) squared distances query-positive and query-negative, float32.
    """
    _check_tuples(descriptors)
    x = descriptors.astype(jnp.float32)
    query = x[:, 0:1, :]
    diff = x[:, 1:, :] - query
    d2 = jnp.sum(diff * diff, axis=-1)  # (B, 1 + N)
    return d2[:, 0], d2[:, 1:]


def _weighted_mean(values, weights):
    """Mean over the tuple axis 0 of `values` (B, ...), tuples weighted by `weights` (B,) (None = all 1)."""
    if weights is None:
        return jnp.mean(values)
    w = jnp.asarray(weights, jnp.float32).reshape((-1,) + (1,) * (values.ndim - 1))
    w = jnp.broadcast_to(w, values.shape)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1e-12)


def triplet_loss(descriptors, margin: float = 0.1, weights=None):
    """Triplet loss with margin on squared Euclidean distances.

    For every tuple b and negative j: `max(0, |q - p|^2 - |q - n_j|^2 + margin)`, averaged over all B * N
    triplets.

    Args:
      descriptors: (B, T, D) tuples, see the module docstring.
      margin: margin in squared-distance units (unit vectors: distances in [0, 4]).
      weights: optional (B,) tuple weights; 0 drops a tuple (the trainer pads batches with such tuples so
        that every device gets the same number).
    Returns:
      (loss scalar float32, fraction of triplets with a positive hinge, scalar float32).
    """
    d_pos, d_neg = tuple_distances(descriptors)
    hinge = jnp.maximum(d_pos[:, None] - d_neg + margin, 0.0)
    return _weighted_mean(hinge, weights), _weighted_mean((hinge > 0).astype(jnp.float32), weights)


def contrastive_loss(descriptors, margin: float = 0.7, weights=None):
    """Contrastive loss (Radenovic et al.): pull positives, push negatives beyond `margin`.

    Per tuple: `0.5 * |q - p|^2 + sum_j 0.5 * max(0, margin - |q - n_j|)^2` with Euclidean (not squared)
    distances in the negative term; averaged over the B tuples.

    Args:
      descriptors: (B, T, D) tuples.
      margin: Euclidean-distance margin (unit vectors: distances in [0, 2]).
      weights: optional (B,) tuple weights, as for `triplet_loss`.
    Returns:
      (loss scalar float32, fraction of negatives closer than the margin, scalar float32).
    """
    d_pos, d_neg = tuple_distances(descriptors)
    # sqrt has an infinite derivative at 0; negatives identical to the query are rare but must not give NaN.
    dist_neg = jnp.sqrt(jnp.maximum(d_neg, 1e-12))
    push = jnp.maximum(margin - dist_neg, 0.0)
    per_tuple = 0.5 * d_pos + 0.5 * jnp.sum(push * push, axis=-1)
    return _weighted_mean(per_tuple, weights), _weighted_mean((push > 0).astype(jnp.float32), weights)


LOSSES = {"triplet": triplet_loss, "contrastive": contrastive_loss}


def tuple_loss(descriptors, kind: str = "triplet", margin: float = 0.1, weights=None):
    """Dispatch to `triplet_loss` or `contrastive_loss` by name (the trainer's config field `loss`)."""
    if kind not in LOSSES:
        raise ValueError(f"loss: expected one of {sorted(LOSSES)}, got {kind!r}")
    return LOSSES[kind](descriptors, margin, weights)
