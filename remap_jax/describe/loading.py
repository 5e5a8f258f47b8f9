"""How an Extractor gets its model: the constructors behind `Extractor.from_config`, `from_pretrained`,
`from_checkpoint` and `from_exported` (each takes the class as `cls` and is bound as a classmethod there).

* from_config: a model spec (`remap_jax.model`) and its variables; the spec's image size and scales.
* from_pretrained: an off-the-shelf backbone (torchvision/timm weights) with a pooling head.
* from_checkpoint: an export directory written by training (`remap_jax.model.save_exported`).
* from_exported: a `remap-export` artifact (`remap_jax.describe.export`) as the describe program.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from remap_jax.model import (
    DTYPES,
    RetrievalModel,
    build_head,
    init_variables,
    load_exported,
    model_from_config,
    normalise_config,
)
from remap_jax.runtime import xla

if TYPE_CHECKING:
    from remap_jax.describe.extractor import Extractor

__all__ = ["from_checkpoint", "from_config", "from_exported", "from_pretrained"]


def from_config(cls: type[Extractor], config: Mapping[str, Any], variables: Mapping, *,
                dtype: str | None = None, fold_bn: bool = True, **options) -> Extractor:
    """An extractor for a model spec (`remap_jax.model`) and its variables. Image size, scales and scale
    weights come from the spec unless given in `options`."""
    config = normalise_config(config)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    model = model_from_config(config, dtype=None if dtype is None else DTYPES[dtype], fold_bn=fold_bn)
    options.setdefault("image_size", tuple(config["image_size"]))
    if "scales" not in options:
        options["scales"] = tuple(config["scales"])
        options.setdefault("scale_weights", config["scale_weights"])
    extractor = cls(model, variables, **options)
    extractor.config = config
    return extractor


def from_pretrained(
    cls: type[Extractor],
    arch: str,
    weights: str | os.PathLike | None = None,
    *,
    taps: Sequence[str] | None = None,
    head: str = "remap",
    levels: int = 4,
    overlap: float = 0.4,
    include_global: bool = False,
    alpha: Mapping[str, Any] | None = None,
    whitening: tuple[Any, Any] | None = None,
    p_init: float = 3.0,
    dtype: str = "float32",
    fold_bn: bool = True,
    seed: int = 0,
    image_size: Sequence[int] = (768, 1024),
    **options,
) -> Extractor:
    """An off-the-shelf extractor: backbone `arch` with torchvision/timm `weights` + a pooling head.

    taps: default `remap_jax.nn.backbones.default_taps(arch)` (the last two blocks).
    head: "remap" (alpha = 1 unless `alpha` maps layers to region weights: multi-layer R-MAC), "rmac",
      "gem", "mac", "spoc". `whitening` = (W, b) adds a whitening layer (y = x @ W.T + b), else none.
    weights=None: seeded random backbone (for tests and timing only; a warning says so); "installed": the
    weights of arch's pip package (`remap_jax.nn.backbones.load_pretrained(arch)`).
    Other keyword options go to `Extractor(...)` (resize, scales, batch_size, ...).
    """
    from remap_jax.nn.backbones import create_backbone, default_taps, input_normalization, load_pretrained

    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    taps = tuple(taps) if taps else default_taps(arch)
    backbone = create_backbone(arch, dtype=DTYPES[dtype], fold_bn=fold_bn)
    fields = dict(levels=levels, overlap=overlap, include_global=include_global, p_init=p_init,
                  whiten=whitening is not None)
    mean, std = input_normalization(arch)
    model = RetrievalModel(backbone=backbone, head=build_head(head, taps, **fields), taps=taps,
                           pixel_mean=tuple(float(v) for v in mean),
                           pixel_std=tuple(float(v) for v in std))
    if weights is None:
        warnings.warn(
            f"Extractor.from_pretrained({arch!r}): no weights given, using a random backbone "
            f"(seed {seed}); descriptors are meaningless for retrieval",
            stacklevel=2,
        )
        backbone_variables = None
    else:
        backbone_variables = load_pretrained(arch, weights)
    head_params = {}
    if alpha is not None:
        from remap_jax.nn.heads import stream_name

        head_params.update({stream_name(layer): {"alpha": a} for layer, a in alpha.items()})
    if whitening is not None:
        w, b = (np.asarray(a, np.float32) for a in whitening)
        head_params["whiten"] = {"kernel": w.T, "bias": b}
    variables = init_variables(model, jax.random.key(seed), (1, *image_size, 3), backbone_variables,
                               head_params=head_params)
    return cls(model, variables, image_size=image_size, **options)


def from_checkpoint(cls: type[Extractor], path: str | os.PathLike, *, dtype: str | None = None,
                    fold_bn: bool = True, **options) -> Extractor:
    """An extractor from an export directory (`remap_jax.model.save_exported`; a training workdir holding
    `export/` also works). Image size, scales and weights come from its config unless given here."""
    path = os.fspath(path)
    if not os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(
        os.path.join(path, "export")
    ):
        path = os.path.join(path, "export")
    config, variables = load_exported(path)
    return cls.from_config(config, variables, dtype=dtype, fold_bn=fold_bn, **options)


def from_exported(cls: type[Extractor], path: str | os.PathLike, **options) -> Extractor:
    """An extractor that runs a `remap-export` artifact (`remap_jax.describe.export`, a directory or its
    `descriptor.jax`) instead of a model: the same reading, decoding, cropping, batching and device
    placement, with the artifact's program as the describe step. Input size and resize rule
    ("exact") come from the artifact; MS-REMAP scales are inside it. Other keyword options go to
    `Extractor(...)` (batch_size, workers, mesh, ...). Descriptors only (no `regions`).

    Raises `remap_jax.describe.export.ExportError` for a missing, truncated or foreign artifact, or one
    not exported for the devices' platform."""
    from remap_jax.describe.export import ExportedDescriber, ExportError

    fixed = sorted(k for k in ("image_size", "resize", "bucket", "scales", "scale_weights")
                   if k in options)
    if fixed:
        raise ExportError(f"{', '.join(fixed)}: fixed by the exported artifact, not an option of "
                          "from_exported")
    describer = ExportedDescriber(path)
    extractor = cls(describer, {}, image_size=describer.image_size, resize="exact", **options)
    describer.check_platform(extractor._device)
    extractor._program = xla.jit(lambda _variables, batches: describer.program(batches[0]),
                                 platform=extractor._platform)
    return extractor
