"""The `remap-export` command: serving artifacts of a trained or pretrained extractor
(`remap_jax.describe.export`).

    remap-export --checkpoint /tmp/remap_demo/export --out /tmp/remap_demo/serving
    remap-export --arch resnet50 --weights resnet50.safetensors --image-size 768,1024 --out serving/
    remap-export --checkpoint ckpt/ --out serving/ --formats jax --platforms cpu cuda

Writes into OUT: `descriptor.jax` + `descriptor.json` (the jax.export artifact), `saved_model/` (TF
SavedModel, `serving_default`: uint8 `images` (B, H, W, 3) -> float32 `descriptors` (B, D)) and
`descriptor.onnx` (ONNX through jax2onnx, float32 models, when jax2onnx is installed: otherwise a line
says why it was skipped).
Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from remap_jax.describe import export
from remap_jax.describe.extractor import Extractor
from remap_jax.model import DTYPES

FORMATS = ("jax", "saved_model", "onnx")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="remap-export", description=(
        "Export an extractor (uint8 images -> unit descriptors) as a jax.export artifact, a TF SavedModel "
        "and an ONNX file that serve without remap_jax."))
    src = p.add_argument_group("model (either --checkpoint or --arch [--weights])")
    src.add_argument("--checkpoint", help="export directory of a trained model (or its training workdir)")
    src.add_argument("--arch", help="backbone of a pretrained extractor: resnet50, vgg16, efficientnet_lite0")
    src.add_argument("--weights", help="torchvision/timm weights for --arch (default: random, tests only)")
    src.add_argument("--taps", help="comma-separated tap names for --arch (default: last two blocks)")
    src.add_argument("--head", default="remap", help="pooling head for --arch: remap, rmac, gem, mac, spoc")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--image-size", help="HEIGHT,WIDTH of the input (default: the checkpoint's / 768,1024)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="compute dtype (default: the checkpoint's)")
    p.add_argument("--platforms", nargs="+", default=list(export.PLATFORMS),
                   help="platforms of the jax.export artifact and the SavedModel (default: cpu cuda tpu)")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=None,
                   help="what to write (default: all; onnx only where jax2onnx is installed)")
    return p


def make_extractor(args) -> tuple[Extractor, dict]:
    options = {}
    if args.image_size:
        try:
            h, w = (int(v) for v in args.image_size.split(","))
        except ValueError:
            raise export.ExportError(f"--image-size {args.image_size!r}: expected HEIGHT,WIDTH") from None
        options["image_size"] = (h, w)
    if args.checkpoint and args.arch:
        raise export.ExportError("give either --checkpoint or --arch, not both")
    if args.checkpoint:
        return (Extractor.from_checkpoint(args.checkpoint, dtype=args.dtype, **options),
                {"checkpoint": os.path.abspath(args.checkpoint)})
    if args.arch:
        taps = tuple(t for t in (args.taps or "").split(",") if t) or None
        extractor = Extractor.from_pretrained(args.arch, args.weights, taps=taps, head=args.head,
                                              dtype=args.dtype or "float32", **options)
        return extractor, {"arch": args.arch, "weights": args.weights and os.path.abspath(args.weights),
                           "taps": list(extractor.model.taps), "head": args.head}
    raise export.ExportError("give --checkpoint DIR or --arch ARCH [--weights FILE]")


def run(args) -> dict[str, str]:
    """Writes the requested formats; returns format -> path."""
    extractor, source = make_extractor(args)
    formats = args.formats or list(FORMATS)
    if args.formats is None and export.onnx_refusal(extractor):
        print(f"remap-export: onnx skipped: {export.onnx_refusal(extractor)}", file=sys.stderr)
        formats.remove("onnx")
    written = {}
    for fmt in formats:
        start = time.perf_counter()
        if fmt == "jax":
            meta = export.save_artifact(args.out, extractor, args.platforms, source)
            path = os.path.join(args.out, export.ARTIFACT_FILE)
            detail = f"{meta['bytes'] / 1e6:.1f} MB, platforms {', '.join(meta['platforms'])}"
        elif fmt == "saved_model":
            path = export.save_saved_model(os.path.join(args.out, export.SAVED_MODEL_DIR), extractor,
                                           args.platforms)
            detail = f"{_tree_bytes(path) / 1e6:.1f} MB, platforms {', '.join(args.platforms)}"
        else:
            path = export.save_onnx(os.path.join(args.out, export.ONNX_FILE), extractor)
            detail = f"{os.path.getsize(path) / 1e6:.1f} MB"
        written[fmt] = path
        print(f"wrote {path} ({detail}) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return written


def _tree_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(directory) for f in files)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"remap-export: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
