"""`remap-serve`: serve an index built by `remap-index` with the model that built it, over HTTP.

    remap-serve --index idx/ --images /data/photos --checkpoint /tmp/remap_demo/export
    remap-serve --index idx/ --images /data/photos --arch efficientnet_lite0 --weights installed \
        --levels 3 --image-size 192,256
    remap-serve --demo --workdir /tmp/remap_serve      # the demo's test split, built on first use

The model flags are `remap-extract`'s (give the same ones the index was described with). Images are read
only from `--images`, the folder the index's ids are relative to. The server binds 127.0.0.1 unless
`--host` says otherwise; open http://127.0.0.1:8000/ for the page.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from remap_jax.cli.model_flags import add_model_flags
from remap_jax.runtime.command_errors import keeping, reports_os_errors
from remap_jax.runtime.extras import require_for_command
from remap_jax.serve.batching import default_policy

__all__ = ["build_parser", "build_service", "main"]


def _size(text: str) -> int:
    """'8M', '512k', '40000000' -> int (k, M, G: binary multiples)."""
    text = text.strip()
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    try:
        if text and text[-1].lower() in units:
            return int(float(text[:-1]) * units[text[-1].lower()])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a count such as 8M or 40000000") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="remap-serve", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("what to serve (--index, --images and a model, or --demo)")
    src.add_argument("--index", help="index folder written by `remap-index build`")
    src.add_argument("--images", help="the folder the index's ids are paths in (remap-extract --images DIR)")
    src.add_argument("--demo", action="store_true",
                     help="serve the demo's test split (synthetic_landmarks/hard), building it in --workdir")
    src.add_argument("--workdir", default="/tmp/remap_serve", help="--demo: where images and index go")
    src.add_argument("--demo-dataset", default="synthetic_landmarks/hard",
                     help="--demo: the test set served (a synthetic_landmarks config, e.g. .../hard_tiny)")
    src.add_argument("--data-dir", help="--demo: TFDS data folder (default ~/tensorflow_datasets)")
    src.add_argument("--demo-export", default=None,
                     help="--demo: a trained export to use (default: the main job's /tmp/remap_demo/export "
                          "when present, else ImageNet EfficientNet-Lite0)")
    model = p.add_argument_group("model (remap-extract's flags: the ones the index was described with)")
    add_model_flags(model, pooling=True)
    model.add_argument("--image-size", help="HEIGHT,WIDTH of landscape inputs")
    model.add_argument("--resize", choices=("fixed", "long_side", "exact"), default="fixed")
    model.add_argument("--bucket", type=int, default=64)
    model.add_argument("--dtype", choices=("float32", "bfloat16"))
    srv = p.add_argument_group("service")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--batch-sizes", help="comma-separated batch sizes compiled at start (default per "
                     "platform: cpu 1,2; gpu/tpu 1,2,4,8,16)")
    srv.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for company")
    srv.add_argument("--max-queue", type=int, default=64,
                     help="queued requests beyond which new ones get 503")
    srv.add_argument("--max-bytes", type=_size, default=8 << 20, help="upload byte cap (default 8M)")
    srv.add_argument("--max-pixels", type=_size, default=40_000_000,
                     help="upload pixel cap (default 40000000)")
    srv.add_argument("--k", type=int, default=12, help="results when a search names no k")
    srv.add_argument("--max-k", type=int, default=100, help="most results a search may ask for")
    srv.add_argument("--skip-model-check", action="store_true",
                     help="do not check at start that the model finds indexed images at their own entries")
    return p


def _model_args(args, flags: Sequence[str] | None = None):
    """The namespace `remap_jax.cli.extract.make_extractor` reads, from our flags (or demo flags)."""
    from remap_jax.cli import extract as extract_cli

    if flags is None:
        flags = []
        for name in ("checkpoint", "arch", "weights", "taps", "whitening", "image_size", "dtype"):
            value = getattr(args, name)
            if value is not None:
                flags += ["--" + name.replace("_", "-"), str(value)]
        flags += ["--head", args.head, "--levels", str(args.levels), "--resize", args.resize,
                  "--bucket", str(args.bucket)]
    ns = extract_cli.build_parser().parse_args([*flags, "--images", "-", "--out", "-"])
    ns.batch_size, ns.workers = 1, 1
    return ns


def build_service(args):
    """(SearchService, a description line) for parsed command-line `args`; builds the demo if asked."""
    from remap_jax.cli.extract import make_extractor
    from remap_jax.search.index import Index
    from remap_jax.serve.service import SearchService

    if args.demo:
        from remap_jax.cli import serve_demo as demo

        if args.index or args.images:
            raise ValueError("--demo: builds its own index and images; leave out --index and --images")
        flags = demo.demo_model_flags(args.demo_export or demo.DEMO_EXPORT)
        extractor, _ = make_extractor(_model_args(args, flags))
        index_dir, images_dir = demo.prepare_demo(args.workdir, flags, extractor.fingerprint(),
                                                  args.demo_dataset, args.data_dir)
        what = f"demo {args.demo_dataset} ({' '.join(flags)})"
    else:
        if not (args.index and args.images):
            raise ValueError("expected --index and --images (and the model flags), or --demo")
        extractor, _ = make_extractor(_model_args(args))
        index_dir, images_dir = args.index, args.images
        what = f"{index_dir} over {images_dir}"
    index = Index.load(index_dir)
    sizes = [int(v) for v in args.batch_sizes.split(",") if v.strip()] if args.batch_sizes else None
    import jax

    policy = default_policy(jax.devices()[0].platform, sizes, max_wait_s=args.max_wait_ms / 1e3,
                            max_queue=args.max_queue)
    service = SearchService(extractor, index, images_dir, policy=policy, max_k=args.max_k, default_k=args.k,
                            max_pixels=args.max_pixels)
    service.check_images()
    if not args.skip_model_check:
        service.check_model()
    return service, f"{what}: {len(index)} images, {index.dim}-d, batch sizes {list(policy.sizes)}"


def _kept_demo_files(args) -> str | None:
    """--demo: what stays in --workdir after an error (each file there is finished: written atomically)."""
    if args.demo and os.path.isdir(args.workdir) and os.listdir(args.workdir):
        return f"kept the finished files in {args.workdir}: a rerun reuses them"
    return None


@reports_os_errors("remap-serve")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_for_command("remap-serve", {"serve": ("starlette", "uvicorn", "multipart")})
    try:
        # --demo writes images, features and an index into --workdir; each file is finished or absent
        with keeping(lambda: _kept_demo_files(args)):
            service, what = build_service(args)
    except ValueError as e:
        print(f"remap-serve: error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from remap_jax.serve.app import create_app

    app = create_app(service, max_body_bytes=args.max_bytes)
    print(f"remap-serve: {what}; compiling, then serving on http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.exit(main())
