"""Checks of descriptor arrays given to the search functions (the index, the exact ranking, the
expansions): rank 2, a numeric dtype, finite values, turned into C-contiguous float32 (N, D)."""

from __future__ import annotations

import numpy as np


def as_matrix(name: str, x, dim: int | None = None) -> np.ndarray:
    """Returns ``x`` as a C-contiguous float32 (N, D) array (no copy when it already is one), after checks."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected rank 2 (N, D), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name}: expected a float array, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: expected dimension {dim} (the index's), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    check_finite(name, x)
    return x


def check_finite(name: str, x: np.ndarray, rows_per_step: int = 65536) -> None:
    """Raises ValueError naming the first row with a NaN or infinite entry (scanned in slices)."""
    for start in range(0, x.shape[0], rows_per_step):
        ok = np.isfinite(x[start : start + rows_per_step]).all(axis=1)
        if not ok.all():
            bad = start + int(np.argmin(ok))
            count = int((~ok).sum())
            raise ValueError(
                f"{name}: row {bad} contains NaN or infinite values ({count} such rows in rows "
                f"{start}..{start + len(ok) - 1}); expected finite descriptors"
            )
