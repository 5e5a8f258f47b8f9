"""A retrieval model = backbone taps + pooling head; multi-scale description; the export format.

    model = RetrievalModel(create_backbone("resnet50"), REMAPHead(("layer4.1", "layer4.2")), taps=...)
    variables = {"params": {"backbone": ..., "head": ...}, "batch_stats": {"backbone": ...}}
    descriptors = model.apply(variables, images)            # (B, H, W, 3) normalised -> (B, D) unit rows
    descriptors = describe_multiscale(model, variables, images, scales=(1.0, 1.25))   # MS-REMAP

Export format (what the trainer writes at `{workdir}/export/` and `Extractor.from_checkpoint` reads), a
directory holding:

* `config.json` -- a flat JSON object:
    `format`: "remap-jax-export", `version`: 1,
    `arch`: backbone name (see `remap_jax.backbones.ARCHS`), `taps`: list of tap names,
    `head`: "remap" | "rmac" | "gem" | "mac" | "spoc", and the head's fields `levels`, `overlap`,
    `include_global`, `whiten`, `out_dim` (null = input size), `p_init` (GeM),
    `dtype`: "float32" | "bfloat16" (compute dtype),
    `image_size`: [height, width] of landscape inputs (portrait images use [width, height]),
    `scales`: list of input-size multipliers, `scale_weights`: list (optional, default equal weights).
  Unknown keys are kept and ignored; missing optional keys take the defaults above.
* `params.msgpack` -- the variables `{"params": {"backbone", "head"}, "batch_stats": {"backbone"}}` as
  `flax.serialization.msgpack_serialize` of nested dicts of float32 arrays; or, instead, `checkpoint/`:
  the same tree saved by Orbax (`ocp.StandardCheckpointer`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from remap_jax import atomic

EXPORT_FORMAT = "remap-jax-export"
EXPORT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"
ORBAX_DIR = "checkpoint"
HEAD_KINDS = ("remap", "rmac", "gem", "mac", "spoc")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONFIG_DEFAULTS = {
    "head": "remap",
    "levels": 4,
    "overlap": 0.4,
    "include_global": False,
    "whiten": True,
    "out_dim": None,
    "p_init": 3.0,
    "dtype": "float32",
    "image_size": [768, 1024],
    "scales": [1.0],
    "scale_weights": None,
}


class RetrievalModel(nn.Module):
    """Backbone taps -> head. images (B, H, W, 3) float ImageNet-normalised -> (B, D) float32 unit vectors.

    Tap maps are cast to float32 before the head (the backbone may compute in bfloat16).
    """

    backbone: nn.Module
    head: nn.Module
    taps: tuple[str, ...]

    def __call__(self, images: jax.Array) -> jax.Array:
        maps = self.backbone(images, taps=tuple(self.taps))
        return self.head({k: v.astype(jnp.float32) for k, v in maps.items()})


def init_variables(
    model: RetrievalModel,
    key: jax.Array,
    input_shape=(1, 224, 224, 3),
    backbone_variables: Mapping | None = None,
) -> dict:
    """Variables {"params": {"backbone", "head"}, "batch_stats": {"backbone"}} for `model`.

    The backbone gets `backbone_variables` (e.g. `load_pretrained(...)`) or a seeded random init
    (`remap_jax.backbones.init_like`); the head is initialised by its own `init` (alpha_init / whitening_init
    or their defaults) on zero maps of the right shapes. Much cheaper than `jax.jit(model.init)`, which
    compiles the random initialiser of every backbone layer.
    """
    from remap_jax.backbones import init_like

    images = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    key_backbone, key_head = jax.random.split(key)
    if backbone_variables is None:
        bshapes = jax.eval_shape(functools.partial(model.backbone.init, taps=tuple(model.taps)), key, images)
        backbone_variables = init_like(dict(bshapes), key_backbone)
    backbone_variables = dict(backbone_variables)
    apply = functools.partial(model.backbone.apply, taps=tuple(model.taps))
    maps = jax.eval_shape(apply, backbone_variables, images)
    zeros = {k: jnp.zeros(v.shape, jnp.float32) for k, v in maps.items()}
    head_variables = jax.jit(model.head.init)(key_head, zeros)
    return {
        "params": {"backbone": backbone_variables["params"], "head": head_variables.get("params", {})},
        "batch_stats": {"backbone": backbone_variables.get("batch_stats", {})},
    }


def build_head(kind: str, layers: Sequence[str], **fields) -> nn.Module:
    """The head class named `kind` with `layers`; fields the class does not have are dropped."""
    import dataclasses

    from remap_jax import heads

    classes = {"remap": heads.REMAPHead, "rmac": heads.RMAC, "gem": heads.GeM, "mac": heads.MAC,
               "spoc": heads.SPoC}
    if kind not in classes:
        raise ValueError(f"head: unknown head kind {kind!r}; expected one of {', '.join(HEAD_KINDS)}")
    cls = classes[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(layers=tuple(layers), **{k: v for k, v in fields.items() if k in names and k != "layers"})


def model_from_config(config: Mapping[str, Any], dtype: Any = None, fold_bn: bool = False) -> RetrievalModel:
    """RetrievalModel from an export config (see module docstring). `dtype` overrides config["dtype"]."""
    from remap_jax.backbones import create_backbone

    config = normalise_config(config)
    compute = DTYPES[config["dtype"]] if dtype is None else jnp.dtype(dtype)
    backbone = create_backbone(config["arch"], dtype=compute, fold_bn=fold_bn)
    fields = {k: config[k] for k in ("levels", "overlap", "include_global", "whiten", "out_dim", "p_init")}
    head = build_head(config["head"], config["taps"], **fields)
    return RetrievalModel(backbone=backbone, head=head, taps=tuple(config["taps"]))


def normalise_config(config: Mapping[str, Any]) -> dict:
    """Fills defaults and validates an export config; raises ValueError naming the bad field."""
    from remap_jax.backbones import ARCHS, valid_taps

    out = {**CONFIG_DEFAULTS, **dict(config)}
    for key in ("arch", "taps"):
        if key not in config:
            raise ValueError(f"export config: missing required field {key!r} (got {sorted(config)})")
    if out["arch"] not in ARCHS:
        raise ValueError(f"export config: arch {out['arch']!r} unknown; expected one of {', '.join(ARCHS)}")
    out["taps"] = list(out["taps"])
    bad = [t for t in out["taps"] if t not in valid_taps(out["arch"])]
    if bad or not out["taps"]:
        raise ValueError(f"export config: taps {out['taps']} invalid for {out['arch']} (bad: {bad})")
    if out["head"] not in HEAD_KINDS:
        raise ValueError(f"export config: head {out['head']!r}; expected one of {', '.join(HEAD_KINDS)}")
    if out["dtype"] not in DTYPES:
        raise ValueError(f"export config: dtype {out['dtype']!r}; expected one of {', '.join(DTYPES)}")
    if len(out["image_size"]) != 2 or min(out["image_size"]) < 1:
        raise ValueError(f"export config: image_size expected [height, width], got {out['image_size']}")
    out["image_size"] = [int(v) for v in out["image_size"]]
    out["scales"] = [float(s) for s in out["scales"]]
    if out["scale_weights"] is not None and len(out["scale_weights"]) != len(out["scales"]):
        raise ValueError(
            f"export config: scale_weights {out['scale_weights']}: expected one per scale {out['scales']}"
        )
    if out["out_dim"] in (0, None):
        out["out_dim"] = None
    return out


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """(height, width) multiplied by `scale`, rounded, at least 1 pixel each."""
    return max(1, int(round(size[0] * scale))), max(1, int(round(size[1] * scale)))


def combine_scales(descriptors: Sequence[jax.Array], weights: Sequence[float] | None = None) -> jax.Array:
    """MS-REMAP: weighted sum of per-scale (B, D) descriptors, then L2. Default weights are equal."""
    from remap_jax.heads import l2_normalize

    if not descriptors:
        raise ValueError("descriptors: expected at least one scale, got none")
    if weights is None:
        weights = [1.0] * len(descriptors)
    if len(weights) != len(descriptors):
        raise ValueError(f"weights: expected {len(descriptors)} (one per scale), got {len(weights)}")
    total = sum(float(w) * d.astype(jnp.float32) for w, d in zip(weights, descriptors, strict=True))
    return l2_normalize(total)


def describe_multiscale(
    model: nn.Module,
    variables: Mapping,
    images: jax.Array | Sequence[jax.Array],
    scales: Sequence[float] = (1.0,),
    weights: Sequence[float] | None = None,
) -> jax.Array:
    """Multi-scale descriptors (B, D): describe at each scale, weighted sum, L2.

    `images` is either one (B, H, W, 3) normalised batch, resized here to each scale with antialiased
    bilinear interpolation, or a sequence with one batch per scale (already at its size; the Extractor
    resizes every scale from the original image). jit-compatible: scales are static.
    """
    if isinstance(images, (list, tuple)):
        if len(images) != len(scales):
            raise ValueError(f"images: got {len(images)} batches for {len(scales)} scales {tuple(scales)}")
        batches = list(images)
    else:
        if images.ndim != 4:
            raise ValueError(f"images: expected rank 4 (B, H, W, 3), got shape {tuple(images.shape)}")
        b, h, w, c = images.shape
        batches = []
        for s in scales:
            size = scaled_size((h, w), s)
            resized = images if size == (h, w) else jax.image.resize(images, (b, *size, c), "linear")
            batches.append(resized)
    return combine_scales([model.apply(variables, x) for x in batches], weights)


# ----------------------------------------------------------------------------------------- export format


def save_exported(path: str | os.PathLike, config: Mapping[str, Any], variables: Mapping) -> None:
    """Writes `config.json` + `params.msgpack` into directory `path`, atomically (temp dir + rename).

    An existing export at `path` is replaced only once the new one is complete.
    """
    from flax import serialization

    path = os.fspath(path)
    config = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, **dict(config)}
    normalise_config(config)  # fail before writing anything
    state = jax.tree.map(lambda x: np.asarray(x, np.float32), _plain(variables))
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        with open(os.path.join(tmp, PARAMS_FILE), "wb") as f:
            f.write(serialization.msgpack_serialize(state))
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2, default=_json_default)
        atomic.replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_exported(path: str | os.PathLike) -> tuple[dict, dict]:
    """Reads an export directory -> (config with defaults filled, variables as nested dicts of numpy)."""
    from flax import serialization

    path = os.fspath(path)
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"checkpoint {path!r}: no {CONFIG_FILE}; expected an export directory written by "
            "remap_jax.model.save_exported (the trainer's {workdir}/export)"
        )
    with open(config_path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"checkpoint {path!r}: {CONFIG_FILE} is not valid JSON ({e})") from e
    config = normalise_config(raw)
    params_path = os.path.join(path, PARAMS_FILE)
    if os.path.isfile(params_path):
        with open(params_path, "rb") as f:
            variables = serialization.msgpack_restore(f.read())
    elif os.path.isdir(os.path.join(path, ORBAX_DIR)):
        import orbax.checkpoint as ocp

        variables = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(path, ORBAX_DIR)))
    else:
        raise FileNotFoundError(f"checkpoint {path!r}: neither {PARAMS_FILE} nor {ORBAX_DIR}/ found")
    variables = jax.tree.map(np.asarray, _plain(variables))
    for key in ("params",):
        if key not in variables:
            raise ValueError(f"checkpoint {path!r}: variables lack {key!r} (found {sorted(variables)})")
    return config, variables


def _plain(tree):
    """FrozenDict / Mapping trees -> plain nested dicts."""
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    return tree


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.ndarray, tuple)):
        return list(np.asarray(value).tolist())
    raise TypeError(f"export config: value {value!r} of type {type(value).__name__} is not JSON-serialisable")
