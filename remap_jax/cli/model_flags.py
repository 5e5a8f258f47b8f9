"""The model flags `remap-extract`, `remap-export` and `remap-serve` share (--checkpoint, or --arch
[--weights --taps --head], and for extract and serve --levels --whitening), and the `Extractor` they name."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from remap_jax.describe.extractor import Extractor


class ModelFlagsError(ValueError):
    """The model flags contradict each other."""


def add_model_flags(group, pooling: bool = False) -> None:
    """--checkpoint, --arch, --weights, --taps and --head on an argparse parser or argument group; with
    `pooling`, also --levels and --whitening (used by `extractor_from_flags` where the parser has them)."""
    group.add_argument("--arch", help="backbone: resnet18/34/50/101/152, resnext101_32x8d, resnext101_64x4d, "
                       "vgg16, efficientnet_lite0, ...")
    group.add_argument("--weights", help="torchvision/timm weights (.safetensors, .npz, .pth) for --arch, or "
                       "'installed' (the arch's pip weights package); none: random (tests only)")
    group.add_argument("--checkpoint", help="export directory of a trained model (or its training workdir)")
    group.add_argument("--taps", help="comma-separated tap names for --arch (default: last two blocks)")
    group.add_argument("--head", default="remap", help="pooling head for --arch: remap, rmac, gem, mac, spoc")
    if pooling:
        group.add_argument("--levels", type=int, default=4, help="R-MAC levels of the remap/rmac head")
        group.add_argument("--whitening", help=".npz with W (out, in) and b (out,) whitening for --arch")


def extractor_from_flags(args, **options) -> tuple[Extractor, dict] | None:
    """(Extractor, the settings to record as its source) for --checkpoint or --arch, or None when neither
    is given. `args.levels` and `args.whitening` (a .npz of W (out, in) and b (out,)) are used and recorded
    where the command has them. Raises ModelFlagsError when both a checkpoint and an arch are given."""
    from remap_jax.describe.extractor import Extractor  # jax: not needed to parse the flags

    if args.checkpoint and (args.arch or args.weights):
        raise ModelFlagsError("give either --checkpoint or --arch/--weights, not both")
    if args.checkpoint:
        extractor = Extractor.from_checkpoint(args.checkpoint, dtype=args.dtype, **options)
        return extractor, {"checkpoint": os.path.abspath(args.checkpoint)}
    if not args.arch:
        return None
    extra = {}
    if hasattr(args, "levels"):
        extra["levels"] = args.levels
    if getattr(args, "whitening", None):
        with np.load(args.whitening) as f:
            extra["whitening"] = (f["W"], f["b"])
    taps = tuple(t for t in (args.taps or "").split(",") if t) or None
    extractor = Extractor.from_pretrained(args.arch, args.weights, taps=taps, head=args.head,
                                          dtype=args.dtype or "float32", **extra, **options)
    source = {"arch": args.arch, "weights": args.weights and os.path.abspath(args.weights),
              "taps": list(extractor.model.taps), "head": args.head}
    if hasattr(args, "levels"):
        source["levels"] = args.levels
        source["whitening"] = args.whitening and os.path.abspath(args.whitening)
    return extractor, source
