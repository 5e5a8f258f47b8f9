"""Datasets (TFDS builders), the synthetic demo dataset and image helpers.

`import remap_jax.data` is cheap: TensorFlow / TFDS are imported only when a builder or a loader is used.
"""

import importlib

_LAZY = {
    "load_rgb": ("remap_jax.data.images", "load_rgb"),
    "decode_resized": ("remap_jax.data.images", "decode_resized"),
    "ImageDecodeError": ("remap_jax.data.images", "ImageDecodeError"),
    "load_training_set": ("remap_jax.data.loaders", "load_training_set"),
    "load_test_set": ("remap_jax.data.loaders", "load_test_set"),
    "TrainingSet": ("remap_jax.data.sets", "TrainingSet"),
    "TestSet": ("remap_jax.data.sets", "TestSet"),
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'remap_jax.data' has no attribute {name!r}")
