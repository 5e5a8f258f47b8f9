"""The built datasets on disk: a TFDS builder by name (:func:`get_builder`), built on first use
(:func:`prepare`: array_record files under ``data_dir``, default ``~/tensorflow_datasets``), and its records
read by index (:func:`split_source`, :func:`read_record`). Images are decoded with
:func:`remap_jax.data.images.load_rgb` as stored (no EXIF rotation: the benchmark boxes refer to the stored
pixels).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import numpy as np

from remap_jax.data.images import load_rgb
from remap_jax.runtime.extras import require


def _tfds():
    return require("tensorflow_datasets", "data", "the TFDS datasets (remap_jax.data)")


def base_name(name: str) -> str:
    """The dataset of a name: ``"gldv2_clean/tars_1"`` -> ``"gldv2_clean"``, ``"csv:a.csv"`` -> ``"csv"``."""
    return name.split("/", 1)[0].split(":", 1)[0]


def get_builder(name: str, data_dir: str | None = None, synthetic_config=None):
    """The TFDS builder for ``name`` (``"dataset"`` or ``"dataset/config"``), array_record file format.

    ``revisitop1m/tars_N`` and ``gldv2_clean/tars_N`` build the first N image tars, for any N.
    ``synthetic_config``: a :class:`remap_jax.data.synthetic.config.SyntheticConfig` for a custom-sized
    synthetic_landmarks (its config name is derived from the values, so different settings never collide).
    """
    tfds = _tfds()

    # importing the three builder modules registers all their builders with TFDS (tfds.builder below)
    from remap_jax.data.builders.base import TarPrefixConfig
    from remap_jax.data.builders.revisited import Revisitop1m
    from remap_jax.data.builders.synthetic_landmarks import SyntheticLandmarks, SyntheticLandmarksConfig
    from remap_jax.data.builders.training_sets import Gldv2Clean

    if synthetic_config is not None:
        if base_name(name) != "synthetic_landmarks":
            raise ValueError(f"synthetic_config: only valid for synthetic_landmarks, got dataset {name!r}")
        digest = hashlib.sha1(
            json.dumps(dataclasses.asdict(synthetic_config), sort_keys=True).encode()
        ).hexdigest()[:10]
        config = SyntheticLandmarksConfig(name=f"custom_{digest}", synthetic=synthetic_config)
        return SyntheticLandmarks(data_dir=data_dir, config=config, file_format="array_record")
    base, _, config_name = name.partition("/")
    prefix_builders = {"revisitop1m": Revisitop1m, "gldv2_clean": Gldv2Clean}
    match = re.fullmatch(r"tars_(\d+)", config_name)
    if base in prefix_builders and match:
        cls = prefix_builders[base]
        if config_name not in cls.builder_configs:  # any prefix, not only the predefined ones
            config = TarPrefixConfig(name=config_name, num_tars=int(match.group(1)))
            return cls(data_dir=data_dir, config=config, file_format="array_record")
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")


def prepare(builder, manual_dir: str | None = None):
    """Builds the dataset files if they are not there yet (download or manual_dir, see the builders)."""
    tfds = _tfds()

    if not builder.is_prepared():
        config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
        builder.download_and_prepare(download_config=config)
    return builder


def split_source(builder, split: str):
    """A split of a prepared builder as a random-access source; images stay encoded (:func:`read_record`)."""
    tfds = _tfds()

    if split not in builder.info.splits:
        raise ValueError(
            f"split: {builder.info.full_name} has splits {list(builder.info.splits)}, not {split!r}"
        )
    decoders = {"image": tfds.decode.SkipDecoding()}
    return builder.as_data_source(split, decoders=decoders)


def read_record(source, i: int, what: str, field: str = "image", decode: bool = True) -> np.ndarray | bytes:
    """Record i's image: decoded (uint8 (H, W, 3), as stored: no EXIF rotation), or its encoded bytes."""
    n = len(source)
    if not -n <= int(i) < n:
        raise IndexError(f"{what}: index {i} out of range for {n} images")
    data = source[int(i)][field]
    return load_rgb(data, exif_transpose=False) if decode else bytes(data)

