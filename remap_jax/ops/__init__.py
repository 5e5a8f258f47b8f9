"""Compiled array kernels."""

from remap_jax.ops.roi_pool import roi_max_pool, validate_regions

__all__ = ["roi_max_pool", "validate_regions"]
