"""Whitening of global descriptors: PCA-whitening and learned whitening ("Lw", Radenovic et al.).

Both learners return `(W, b)` in the convention of `remap_jax.nn.heads.REMAPHead(whitening_init=(W, b))`:
W has shape (d, D), b shape (d,), and the whitened descriptor is `y = x @ W.T + b` (before the final L2
normalisation). Rows of W are ordered by decreasing importance, so keeping the first d rows is the
dimension reduction. Computation is in float64 numpy; outputs are float32.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pca_whitening", "learned_whitening", "apply_whitening"]


def _check_descriptors(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"descriptors: expected rank 2 (N, D), got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"descriptors: need at least 2 descriptors to estimate a covariance, "
                         f"got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("descriptors: contain NaN or inf")
    return x


def _check_dim(dim: int | None, rank: int, full: int, what: str) -> int:
    if dim is None:
        dim = full
    if not 1 <= dim <= full:
        raise ValueError(f"dim: expected 1 <= dim <= {full} (the descriptor size), got {dim}")
    if dim > rank:
        raise ValueError(f"dim: {what} has rank {rank}, so at most {rank} whitened dimensions are defined, "
                         f"got dim={dim}; lower dim or use more training descriptors")
    return dim


def _sorted_eigh(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric matrix, eigenvalues in decreasing order."""
    vals, vecs = np.linalg.eigh((s + s.T) / 2)
    order = np.argsort(vals)[::-1]
    return vals[order], vecs[:, order]


def _numerical_rank(vals: np.ndarray, rtol: float) -> int:
    return int(np.sum(vals > rtol * max(vals[0], np.finfo(np.float64).tiny)))


def pca_whitening(descriptors: np.ndarray, dim: int | None = None, power: float = 1.0, ridge: float = 0.0,
                  rtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """PCA-whitening learned from training descriptors, with optional eigenvalue shrinkage.

    With mean m and covariance eigen-decomposition C = V diag(lambda) V^T (lambda decreasing), the
    projection is W = diag(lambda^(-power/2))[:dim] V^T[:dim] and b = -W m.
    power = 1 is full whitening (the projected training descriptors have identity covariance); power = 0.5
    is the square-rooted shrinkage used e.g. in DIR / Jegou & Chum to avoid over-amplifying low-variance
    (noisy) directions; power = 0 is a plain PCA rotation with centring.

    Args:
      descriptors: (N, D) training descriptors (usually L2-normalised).
      dim: output dimension d (default D). Must not exceed the covariance rank (at most N - 1).
      power: shrinkage exponent in [0, 1].
      ridge: regularisation: every eigenvalue gets `ridge * mean(lambda)` added before the inverse square
        root. 0 (default) is exact whitening and requires dim <= rank; > 0 makes every dim well defined
        (directions unseen in training are scaled by at most (ridge * mean(lambda))^(-power/2)) and tempers
        the amplification of the noisiest, low-variance directions.
      rtol: eigenvalues below rtol * lambda_max count as zero when checking the rank.

    Returns:
      (W (d, D), b (d,)) float32.
    """
    x = _check_descriptors(descriptors)
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"power: expected a value in [0, 1], got {power}")
    if ridge < 0:
        raise ValueError(f"ridge: expected >= 0, got {ridge}")
    m = x.mean(axis=0)
    xc = x - m
    vals, vecs = _sorted_eigh(xc.T @ xc / x.shape[0])
    if ridge > 0:
        dim = _check_dim(dim, x.shape[1], x.shape[1], "the regularised covariance")
        vals = np.maximum(vals, 0.0) + ridge * max(vals.mean(), np.finfo(np.float64).tiny)
    else:
        dim = _check_dim(dim, _numerical_rank(vals, rtol), x.shape[1], "the descriptors' covariance")
    w = vecs[:, :dim].T * (vals[:dim] ** (-power / 2))[:, None]
    return w.astype(np.float32), (-w @ m).astype(np.float32)


def _cholesky_with_jitter(s: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of s, adding growing jitter on the diagonal until s is positive definite."""
    jitter = 0.0
    scale = max(float(np.trace(s)) / s.shape[0], np.finfo(np.float64).tiny)
    for _ in range(20):
        try:
            return np.linalg.cholesky(s + jitter * np.eye(s.shape[0]))
        except np.linalg.LinAlgError:
            jitter = 1e-10 * scale if jitter == 0 else jitter * 10
    raise ValueError("matching-pair difference covariance: not positive definite even with jitter "
                     f"{jitter:.1e}; are the descriptors finite and varied?")


def learned_whitening(descriptors: np.ndarray, qidx: np.ndarray, pidx: np.ndarray, dim: int | None = None,
                      ridge: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Learned whitening "Lw" from matching pairs (Radenovic, Tolias, Chum, ECCV 2016 / TPAMI 2018).

    Step 1 whitens the intra-class (matching-pair) variation: with the difference covariance
    S = mean_i (x_q(i) - x_p(i)) (x_q(i) - x_p(i))^T and its Cholesky factor S = L L^T, P1 = L^-1, so
    matching-pair differences have identity covariance after P1. Step 2 rotates by the PCA of all
    training descriptors (centred on the mean of the query descriptors) in that whitened space, whose
    variance is dominated by non-matching variation (the paper's "PCA of the whitened non-matching
    pairs"; cirtorch's implementation uses all descriptors this way too): P = V^T P1 with V the eigenvectors
    in decreasing order of variance. Keeping the first d rows keeps the directions along which non-matching
    descriptors spread most relative to matching noise.

    Properties of the result (checked in the tests): with ridge = 0 the projected matching-pair differences
    have second moment identity (for any d); the projected training descriptors have a diagonal covariance
    with decreasing variances.

    Args:
      descriptors: (N, D) training descriptors.
      qidx, pidx: (P,) indices of the two images of each matching pair.
      dim: output dimension d (default D). Step 2 is a rotation, so any d <= D is defined.
      ridge: S gets `ridge * trace(S) / D` added on the diagonal. With fewer matching pairs than
        dimensions (P < D) S is singular: with ridge = 0 a tiny jitter is added (as cirtorch does) and
        the directions in which the few matching pairs happen not to differ are amplified enormously, which
        over-fits; a ridge of 1e-3..1e-1 keeps that amplification bounded.

    Returns:
      (W (d, D), b (d,)) float32 with W = P[:d], b = -W m.
    """
    x = _check_descriptors(descriptors)
    qidx = np.asarray(qidx)
    pidx = np.asarray(pidx)
    if qidx.ndim != 1 or qidx.shape != pidx.shape:
        raise ValueError(f"qidx / pidx: expected two (P,) index arrays of equal length, got shapes "
                         f"{qidx.shape} and {pidx.shape}")
    if qidx.size < 2:
        raise ValueError(f"qidx / pidx: need at least 2 matching pairs, got {qidx.size}")
    for name, idx in (("qidx", qidx), ("pidx", pidx)):
        if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= x.shape[0]:
            raise ValueError(f"{name}: expected integer indices in [0, {x.shape[0]}), got dtype {idx.dtype} "
                             f"range [{idx.min()}, {idx.max()}]")
    if ridge < 0:
        raise ValueError(f"ridge: expected >= 0, got {ridge}")
    dim = _check_dim(dim, x.shape[1], x.shape[1], "the descriptors")
    m = x[qidx].mean(axis=0)
    diff = x[qidx] - x[pidx]
    s = diff.T @ diff / diff.shape[0]
    s += ridge * max(np.trace(s) / s.shape[0], np.finfo(np.float64).tiny) * np.eye(s.shape[0])
    p1 = np.linalg.inv(_cholesky_with_jitter(s))
    z = (x - m) @ p1.T
    _, vecs = _sorted_eigh(z.T @ z / x.shape[0])
    w = vecs[:, :dim].T @ p1
    return w.astype(np.float32), (-w @ m).astype(np.float32)


def apply_whitening(descriptors: np.ndarray, w: np.ndarray, b: np.ndarray, normalize: bool = True,
                    eps: float = 1e-6) -> np.ndarray:
    """y = x @ W.T + b, then (optionally) L2-normalised per row. (N, D) -> (N, d) float32."""
    x = np.asarray(descriptors, np.float32)
    w = np.asarray(w, np.float32)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"descriptors {x.shape} / W {w.shape}: expected (N, D) and (d, D)")
    y = x @ w.T + np.asarray(b, np.float32)
    if normalize:
        y = y / (np.linalg.norm(y, axis=1, keepdims=True) + eps)
    return y
