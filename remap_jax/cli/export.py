"""The `remap-export` command: serving artifacts of a trained or pretrained extractor
(`remap_jax.describe.export`).

    remap-export --checkpoint /tmp/remap_demo/export --out /tmp/remap_demo/serving
    remap-export --arch resnet50 --weights resnet50.safetensors --image-size 768,1024 --out serving/
    remap-export --checkpoint ckpt/ --out serving/ --formats jax --platforms cpu cuda

Writes into OUT: `descriptor.jax` + `descriptor.json` (the jax.export artifact), `saved_model/` (TF
SavedModel, `serving_default`: uint8 `images` (B, H, W, 3) -> float32 `descriptors` (B, D)) and
`descriptor.onnx` (ONNX through jax2onnx, float32 models, when jax2onnx is installed: otherwise a line
says why it was skipped). The formats are written into a temporary folder next to OUT and moved in at the
end, so a failed export leaves OUT as it was. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import time
from collections.abc import Sequence

from remap_jax.cli.model_flags import add_model_flags, extractor_from_flags
from remap_jax.describe import export
from remap_jax.describe.extractor import Extractor
from remap_jax.model import DTYPES
from remap_jax.runtime import atomic
from remap_jax.runtime.command_errors import reports_os_errors

FORMATS = ("jax", "saved_model", "onnx")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="remap-export", description=(
        "Export an extractor (uint8 images -> unit descriptors) as a jax.export artifact, a TF SavedModel "
        "and an ONNX file that serve without remap_jax."))
    add_model_flags(p.add_argument_group("model (either --checkpoint or --arch [--weights])"))
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
    chosen = extractor_from_flags(args, **options)
    if chosen is None:
        raise export.ExportError("give --checkpoint DIR or --arch ARCH [--weights FILE]")
    return chosen


def run(args) -> dict[str, str]:
    """Writes the requested formats into a temporary folder next to OUT, then moves them into OUT (other
    files already there stay); returns format -> path."""
    extractor, source = make_extractor(args)
    formats = args.formats or list(FORMATS)
    if args.formats is None and export.onnx_refusal(extractor):
        print(f"remap-export: onnx skipped: {export.onnx_refusal(extractor)}", file=sys.stderr)
        formats.remove("onnx")
    names = {"jax": export.ARTIFACT_FILE, "saved_model": export.SAVED_MODEL_DIR, "onnx": export.ONNX_FILE}
    done = []
    with atomic.writing_dir(args.out, merge=True) as tmp:
        for fmt in formats:
            start = time.perf_counter()
            path = os.path.join(tmp, names[fmt])
            if fmt == "jax":
                meta = export.save_artifact(tmp, extractor, args.platforms, source)
                detail = f"{meta['bytes'] / 1e6:.1f} MB, platforms {', '.join(meta['platforms'])}"
            elif fmt == "saved_model":
                with _tensorflow_errors_as_os_errors(path):
                    export.save_saved_model(path, extractor, args.platforms)
                detail = f"{_tree_bytes(path) / 1e6:.1f} MB, platforms {', '.join(args.platforms)}"
            else:
                export.save_onnx(path, extractor)
                detail = f"{os.path.getsize(path) / 1e6:.1f} MB"
            done.append((fmt, detail, time.perf_counter() - start))
    written = {}
    for fmt, detail, seconds in done:
        written[fmt] = os.path.join(args.out, names[fmt])
        print(f"wrote {written[fmt]} ({detail}) in {seconds:.1f} s", file=sys.stderr)
    return written


@contextlib.contextmanager
def _tensorflow_errors_as_os_errors(path: str):
    """TensorFlow's file-system errors while writing the SavedModel as the OSError they stand for."""
    try:
        yield
    except Exception as e:
        tf_errors = getattr(sys.modules.get("tensorflow"), "errors", None)
        codes = {} if tf_errors is None else {
            tf_errors.PermissionDeniedError: errno.EACCES, tf_errors.ResourceExhaustedError: errno.ENOSPC,
            tf_errors.NotFoundError: errno.ENOENT, tf_errors.AlreadyExistsError: errno.EEXIST,
            tf_errors.FailedPreconditionError: errno.EIO, tf_errors.DataLossError: errno.EIO,
        }
        code = next((c for cls, c in codes.items() if isinstance(e, cls)), None)
        if code is None:
            raise
        message = " ".join(str(getattr(e, "message", e)).split())
        raise OSError(code, f"{os.strerror(code)} ({message[:300]})", path) from None


def _tree_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(directory) for f in files)


@reports_os_errors("remap-export")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except ValueError as e:
        print(f"remap-export: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
