"""The one description of a retrieval model (the model spec), the model it builds, and the export format.

A *model spec* is a flat mapping, the `config.json` of an export and the `model` part of a training config:

    spec = {"arch": "resnet101", "taps": ["layer4.1", "layer4.2"], "head": "remap", "levels": 4,
            "image_size": [768, 1024]}                      # every other field takes its default
    model = model_from_config(spec)                         # RetrievalModel: backbone taps -> head
    variables = init_variables(model, jax.random.key(0), (1, 768, 1024, 3), backbone_variables=...)
    descriptors = model.apply(variables, pixels)            # (B, H, W, 3) RGB in [0, 255] -> (B, D) unit rows

Fields (`SPEC_DEFAULTS` holds the defaults; `arch` and `taps` are required):
  `arch`: backbone name (`remap_jax.nn.backbones.ARCHS`), `taps`: tap names in concatenation order,
  `head`: "remap" | "rmac" | "gem" | "mac" | "spoc", and the head fields `levels`, `overlap`, `include_global`
  (the R-MAC grid), `whiten`, `out_dim` (0 or null = the concatenated size), `p_init` (GeM),
  `dtype`: "float32" | "bfloat16" (compute dtype; parameters stay float32),
  `image_size`: [height, width] of landscape inputs (portrait images use [width, height]),
  `scales`: input-size multipliers, `scale_weights`: one weight per scale (null: equal weights).
A head field is added in one place: `HEAD_FIELDS` / `SPEC_DEFAULTS` here (and the head class). Training
configs take their `model` fields from `SPEC_DEFAULTS` (train/configs/base.py), so they get it too.

Export format (what the trainer writes at `{workdir}/export/` and `Extractor.from_checkpoint` reads), a
directory holding `config.json` (the spec plus `format`: "remap-jax-export", `version`: 1; unknown keys are
kept and ignored) and `params.msgpack`: the variables `{"params": {"backbone", "head"}, "batch_stats":
{"backbone"}}` as `flax.serialization.msgpack_serialize` of nested dicts of float32 arrays; or, instead,
`checkpoint/`: the same tree saved by Orbax (`ocp.StandardCheckpointer`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from remap_jax.data.images import IMAGENET_MEAN, IMAGENET_STD, normalize
from remap_jax.runtime import atomic
from remap_jax.runtime.extras import require

EXPORT_FORMAT = "remap-jax-export"
EXPORT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"
ORBAX_DIR = "checkpoint"
HEAD_KINDS = ("remap", "rmac", "gem", "mac", "spoc")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The head's fields: passed to the head class that has them (see `build_head`).
HEAD_FIELDS = ("levels", "overlap", "include_global", "whiten", "out_dim", "p_init")
# What describes the network (a training config's `model` holds exactly these, plus `pretrained`).
MODEL_FIELDS = ("arch", "taps", "head", *HEAD_FIELDS, "dtype")
SPEC_DEFAULTS = {
    "head": "remap",
    "levels": 4,
    "overlap": 0.4,
    "include_global": False,
    "whiten": True,
    "out_dim": 0,
    "p_init": 3.0,
    "dtype": "float32",
    "image_size": [768, 1024],
    "scales": [1.0],
    "scale_weights": None,
}
CONFIG_DEFAULTS = SPEC_DEFAULTS  # the name export readers used before the spec had its own


class RetrievalModel(nn.Module):
    """Pixels -> backbone taps -> head. images (B, H, W, 3) RGB pixel values in [0, 255] (uint8 or float)
    -> (B, D) float32 unit vectors.

    The model normalises its input with the statistics its backbone was trained with (`pixel_mean`,
    `pixel_std`: RGB, for pixels scaled to [0, 1]); this is the only place images are normalised. Tap maps
    are cast to float32 before the head (the backbone may compute in bfloat16).
    """

    backbone: nn.Module
    head: nn.Module
    taps: tuple[str, ...]
    pixel_mean: tuple[float, float, float] = tuple(float(v) for v in IMAGENET_MEAN)
    pixel_std: tuple[float, float, float] = tuple(float(v) for v in IMAGENET_STD)

    def normalize(self, images: jax.Array) -> jax.Array:
        """(..., 3) pixels in [0, 255] -> float32 `(x / 255 - mean) / std`."""
        mean, std = np.asarray(self.pixel_mean, np.float32), np.asarray(self.pixel_std, np.float32)
        return normalize(images, mean, std)

    def features(self, images: jax.Array) -> dict[str, jax.Array]:
        """Pixels -> {tap: (B, h, w, C) float32}: what the head pools."""
        maps = self.backbone(self.normalize(images), taps=tuple(self.taps))
        return {k: v.astype(jnp.float32) for k, v in maps.items()}

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.head(self.features(images))


def backbone_variables_of(variables: Mapping) -> dict:
    """The backbone's own variables {"params", "batch_stats"} out of a RetrievalModel's variables."""
    return {collection: tree["backbone"] for collection, tree in variables.items() if "backbone" in tree}


def init_variables(
    model: RetrievalModel,
    key: jax.Array,
    input_shape=(1, 224, 224, 3),
    backbone_variables: Mapping | None = None,
    head_params: Mapping | None = None,
) -> dict:
    """Variables {"params": {"backbone", "head"}, "batch_stats": {"backbone"}} for `model`.

    The backbone gets `backbone_variables` (e.g. `load_pretrained(...)`) or a seeded random init
    (`remap_jax.nn.backbones.init_like`); the head is initialised by its own `init` (alpha ones, identity
    whitening, ...) on zero maps of the right shapes, then `head_params` (a subtree of the head's parameters,
    e.g. KL region weights and whitening from `remap_jax.fit.head_init_files.head_param_tree`) replaces
    what it names.
    Much cheaper than `jax.jit(model.init)`, which compiles the random initialiser of every backbone layer.
    """
    from remap_jax.nn.backbones import init_like

    images = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    key_backbone, key_head = jax.random.split(key)
    apply = functools.partial(model.backbone.apply, taps=tuple(model.taps))
    if backbone_variables is None:
        bshapes = jax.eval_shape(functools.partial(model.backbone.init, taps=tuple(model.taps)), key, images)
        backbone_variables = init_like(dict(bshapes), key_backbone)
    backbone_variables = dict(backbone_variables)
    maps = jax.eval_shape(apply, backbone_variables, images)
    zeros = {k: jnp.zeros(v.shape, jnp.float32) for k, v in maps.items()}
    head = dict(jax.jit(model.head.init)(key_head, zeros).get("params", {}))
    if head_params:
        head = _replace_params(jax.tree.map(np.asarray, head), head_params)
    return {
        "params": {"backbone": backbone_variables["params"], "head": head},
        "batch_stats": {"backbone": backbone_variables.get("batch_stats", {})},
    }


def _replace_params(params: dict, replacement: Mapping, path: str = "head") -> dict:
    out = dict(params)
    for name, value in replacement.items():
        if name not in params:
            raise ValueError(f"head parameters: {path}/{name} is not a parameter of this head; it has "
                             f"{sorted(params)}")
        if isinstance(value, Mapping):
            out[name] = _replace_params(dict(params[name]), value, f"{path}/{name}")
            continue
        value = np.asarray(value, np.float32)
        if value.shape != np.shape(params[name]):
            raise ValueError(f"head parameters: {path}/{name} has shape {value.shape}, the model needs "
                             f"{np.shape(params[name])} (was it computed for another image size or taps?)")
        out[name] = value
    return out


def build_head(kind: str, layers: Sequence[str], **fields) -> nn.Module:
    """The head class named `kind` on `layers`; fields the class does not have are dropped."""
    from remap_jax.nn import heads

    classes = {"remap": heads.REMAPHead, "rmac": heads.RMAC, "gem": heads.GeM, "mac": heads.MAC,
               "spoc": heads.SPoC}
    if kind not in classes:
        raise ValueError(f"head: unknown head kind {kind!r}; expected one of {', '.join(HEAD_KINDS)}")
    cls = classes[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    if fields.get("out_dim") == 0:
        fields["out_dim"] = None
    return cls(layers=tuple(layers), **{k: v for k, v in fields.items() if k in names and k != "layers"})


def model_from_config(config: Mapping[str, Any], dtype: Any = None, fold_bn: bool = False) -> RetrievalModel:
    """RetrievalModel from a model spec (see module docstring). `dtype` overrides config["dtype"]."""
    from remap_jax.nn.backbones import create_backbone, input_normalization

    config = normalise_config(config)
    compute = DTYPES[config["dtype"]] if dtype is None else jnp.dtype(dtype)
    backbone = create_backbone(config["arch"], dtype=compute, fold_bn=fold_bn)
    head = build_head(config["head"], config["taps"], **{k: config[k] for k in HEAD_FIELDS})
    mean, std = input_normalization(config["arch"])  # what the backbone's weights were trained with
    return RetrievalModel(backbone=backbone, head=head, taps=tuple(config["taps"]),
                          pixel_mean=tuple(float(v) for v in mean), pixel_std=tuple(float(v) for v in std))


def spec_errors(config: Mapping[str, Any], *, backbone: bool = True) -> list[str]:
    """What is wrong with a model spec: one "field = value: expected ..." string per bad field.

    backbone=False skips `arch` and `taps` (a custom backbone that is not in the registry).
    """
    from remap_jax.nn.backbones import ARCHS, valid_taps

    c = {**SPEC_DEFAULTS, **dict(config)}
    errors = [f"{key}: missing required field (got {sorted(config)})" for key in ("arch", "taps")
              if backbone and key not in config]
    if errors:
        return errors

    def check(ok: bool, field: str, expected: str) -> None:
        if not ok:
            errors.append(f"{field} = {c[field]!r}: expected {expected}")

    if backbone:
        check(c["arch"] in ARCHS, "arch", f"one of {', '.join(ARCHS)}")
        taps = c["taps"]
        check(isinstance(taps, (list, tuple)) and len(taps) >= 1 and all(isinstance(t, str) for t in taps),
              "taps", "a non-empty list of backbone block names")
        if not errors:
            valid = valid_taps(c["arch"])
            bad = [t for t in taps if t not in valid]
            if bad:
                errors.append(f"taps: {bad} are not blocks of {c['arch']}; valid: {', '.join(valid)}")
    check(c["head"] in HEAD_KINDS, "head", f"one of {', '.join(HEAD_KINDS)}")
    check(isinstance(c["levels"], int) and c["levels"] >= 1, "levels", "an int >= 1")
    check(isinstance(c["overlap"], (int, float)) and 0 <= c["overlap"] < 1, "overlap", "in [0, 1)")
    check(c["out_dim"] is None or (isinstance(c["out_dim"], int) and c["out_dim"] >= 0), "out_dim",
          ">= 0 (0 keeps the input dimension)")
    check(isinstance(c["p_init"], (int, float)) and c["p_init"] > 0, "p_init", "> 0")
    check(c["dtype"] in DTYPES, "dtype", f"one of {', '.join(DTYPES)}")
    size = c["image_size"]
    check(isinstance(size, (list, tuple)) and len(size) == 2
          and all(isinstance(v, int) and v >= 1 for v in size), "image_size", "[height, width], ints >= 1")
    scales = c["scales"]
    check(isinstance(scales, (list, tuple)) and len(scales) >= 1 and all(float(s) > 0 for s in scales),
          "scales", "a non-empty list of positive multipliers")
    weights = c["scale_weights"]
    check(weights is None or (isinstance(weights, (list, tuple)) and len(weights) == len(scales)),
          "scale_weights", f"null or one weight per scale ({len(scales)})")
    return errors


def normalise_config(config: Mapping[str, Any]) -> dict:
    """A model spec with defaults filled and types made canonical; ValueError names every bad field."""
    errors = spec_errors(config)
    if errors:
        raise ValueError("model spec: " + "; ".join(errors))
    out = {**SPEC_DEFAULTS, **dict(config)}
    out["taps"] = list(out["taps"])
    out["image_size"] = [int(v) for v in out["image_size"]]
    out["scales"] = [float(s) for s in out["scales"]]
    if out["scale_weights"] is not None:
        out["scale_weights"] = [float(w) for w in out["scale_weights"]]
    if out["out_dim"] in (0, None):
        out["out_dim"] = None
    return out


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """(height, width) multiplied by `scale`, rounded, at least 1 pixel each."""
    return max(1, int(round(size[0] * scale))), max(1, int(round(size[1] * scale)))


def combine_scales(descriptors: Sequence[jax.Array], weights: Sequence[float] | None = None) -> jax.Array:
    """MS-REMAP: weighted sum of per-scale (B, D) descriptors, then L2. Default weights are equal."""
    from remap_jax.nn.heads import l2_normalize

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

    `images` is either one (B, H, W, 3) pixel batch, resized here to each scale with antialiased bilinear
    interpolation, or a sequence with one batch per scale (already at its size; the Extractor resizes every
    scale from the original image). jit-compatible: scales are static.
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
            resized = images if size == (h, w) else jax.image.resize(images.astype(jnp.float32),
                                                                      (b, *size, c), "linear")
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
    with atomic.writing_dir(path) as tmp:
        with atomic.atomic_write(os.path.join(tmp, PARAMS_FILE)) as f:
            f.write(serialization.msgpack_serialize(state))
        atomic.write_json(os.path.join(tmp, CONFIG_FILE), config, indent=2)


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
    raw = atomic.read_json(config_path, ValueError, f"checkpoint {path!r}: {CONFIG_FILE}")
    config = normalise_config(raw)
    params_path = os.path.join(path, PARAMS_FILE)
    if os.path.isfile(params_path):
        with open(params_path, "rb") as f:
            variables = serialization.msgpack_restore(f.read())
    elif os.path.isdir(os.path.join(path, ORBAX_DIR)):
        ocp = require("orbax.checkpoint", "train", f"reading the Orbax export {path!r}")
        variables = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(path, ORBAX_DIR)))
    else:
        raise FileNotFoundError(f"checkpoint {path!r}: neither {PARAMS_FILE} nor {ORBAX_DIR}/ found")
    variables = jax.tree.map(np.asarray, _plain(variables))
    if "params" not in variables:
        raise ValueError(f"checkpoint {path!r}: variables lack 'params' (found {sorted(variables)})")
    return config, variables


def _plain(tree):
    """FrozenDict / Mapping trees -> plain nested dicts."""
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    return tree
