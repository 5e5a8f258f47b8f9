"""remap-jax: REMAP multi-layer entropy-guided pooling for image retrieval, in JAX/Flax.

Submodules are imported lazily so that `import remap_jax` stays cheap (no TensorFlow, no ScaNN).
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Extractor": ("remap_jax.describe.extractor", "Extractor"),
    "Index": ("remap_jax.search.index", "Index"),
    "rmac_regions": ("remap_jax.nn.regions", "rmac_regions"),
    "roi_max_pool": ("remap_jax.nn.roi_pool", "roi_max_pool"),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'remap_jax' has no attribute {name!r}")
