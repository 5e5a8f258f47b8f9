"""The `remap-extract` command: global descriptors of a folder or list of images into a feature file.

    remap-extract --arch resnet101 --weights resnet101.safetensors --images DIR --out db.npz
    remap-extract --checkpoint /tmp/remap_demo/export --images queries.txt --out q.npz --scales 1,1.25
    remap-extract --exported /tmp/remap_demo/serving --images DIR --out db.npz     # a remap-export artifact

`--images` is a directory (searched recursively) or a text file with one image path per line, optionally
followed by a bounding box `x0 y0 x1 y1`. The output `.npz` holds `descriptors` (N, D) float32, `ids` (N,)
(paths as listed, or relative to DIR), `failed` (M,) and `failed_reasons` (M,) for images that could not be
read, and `meta` (JSON of the settings). Progress is written to `OUT.partial.npz` every `--save-every` batches
and on interruption; rerunning the same command resumes from it. The description itself is
`remap_jax.describe.extractor.Extractor`.

Scaling out, two ways:
* `--shard I/N`: independent jobs (a SLURM array, a Kubernetes indexed Job) each describe the I-th of N
  contiguous, disjoint shares of the sorted input list (together they cover it exactly once) into their own
  OUT, resumable as above; `remap-index build --features 'db.*.npz'` and `train.eval` merge the files.
* `--coordinator_address/--num_processes/--process_id`: one job of several processes (`jax.distributed`);
  each describes its share on its own devices (keeping `OUT.partial-pIofN.npz`), and process 0 writes OUT.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from remap_jax.cli.model_flags import ModelFlagsError, add_model_flags, extractor_from_flags
from remap_jax.data.labelled import IMAGE_EXTENSIONS
from remap_jax.describe.extractor import Extractor
from remap_jax.describe.pipeline import RESIZE_MODES
from remap_jax.describe.resumable import (
    ResumeMismatchError,
    describe_resumable,
    feature_arrays,
    partial_file_of_process,
)
from remap_jax.model import DTYPES
from remap_jax.runtime import atomic, distributed, host_memory
from remap_jax.runtime.command_errors import keeping, reports_os_errors
from remap_jax.runtime.extras import MissingExtraError


def list_images(spec: str) -> tuple[list[str], list[str], list[Any]]:
    """`--images` argument -> (ids, paths, bboxes). A directory is searched recursively for image files
    (ids = paths relative to it, sorted); a text file lists `path [x0 y0 x1 y1]` per line (relative paths are
    relative to the list file; `#` starts a comment)."""
    if os.path.isdir(spec):
        ids = []
        for root, dirs, files in os.walk(spec):
            dirs.sort()
            for name in files:
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    ids.append(os.path.relpath(os.path.join(root, name), spec))
        ids.sort()
        if not ids:
            raise ValueError(f"--images {spec!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
        return ids, [os.path.join(spec, i) for i in ids], [None] * len(ids)
    if not os.path.isfile(spec):
        raise ValueError(f"--images {spec!r}: no such directory or list file")
    base = os.path.dirname(os.path.abspath(spec))
    ids, paths, bboxes = [], [], []
    with open(spec) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            bbox = None
            if len(parts) >= 5:
                try:
                    bbox = tuple(float(v) for v in parts[-4:])
                    parts = parts[:-4]
                except ValueError:
                    bbox = None
            name = " ".join(parts) if bbox is not None else line
            ids.append(name)
            paths.append(name if os.path.isabs(name) else os.path.join(base, name))
            bboxes.append(bbox)
    if not ids:
        raise ValueError(f"--images {spec!r}: the list file names no images")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"--images {spec!r}: duplicate entries {dup}; ids must be unique")
    return ids, paths, bboxes


def partial_path(out: str) -> str:
    """`db.npz` -> `db.partial.npz`: where progress is kept while extracting."""
    stem = out[:-4] if out.endswith(".npz") else out
    return stem + ".partial.npz"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="remap-extract",
        description="Extract global REMAP descriptors for a folder or list of images into an .npz file.",
    )
    src = p.add_argument_group("model (either --arch [--weights], --checkpoint or --exported)")
    add_model_flags(src, pooling=True)
    src.add_argument("--exported", help="a remap-export artifact (its directory or descriptor.jax); input "
                     "size and resize rule come from it")
    p.add_argument("--images", required=True, help="image directory (recursive) or list file")
    p.add_argument(
        "--out", required=True, help="output .npz (descriptors, ids, failed, failed_reasons, meta)"
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), help="compute dtype (default float32 / the checkpoint's)"
    )
    p.add_argument("--scales", help="comma-separated input-size multipliers, e.g. 1,1.25 (MS-REMAP)")
    p.add_argument("--scale-weights", help="comma-separated weights, one per scale (default equal)")
    p.add_argument(
        "--image-size", help="HEIGHT,WIDTH of landscape inputs (default 768,1024 / the checkpoint's)"
    )
    p.add_argument("--resize", choices=RESIZE_MODES, default="fixed")
    p.add_argument("--bucket", type=int, default=64, help="short-side multiple for --resize long_side")
    p.add_argument("--workers", type=int, default=4, help="decoding threads")
    p.add_argument("--no-draft", action="store_true", help="decode every pixel of large JPEGs (exact; "
                   "default: the decoder's 1/2-1/8 scaling for JPEGs at least twice the target size)")
    p.add_argument("--save-every", type=int, default=50, help="write OUT.partial.npz every N batches")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing OUT.partial.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                   help="describe only share I of N (0-based) of the sorted inputs, e.g. 3/100")
    distributed.add_flags(p)
    return p


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/N"` -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/N, e.g. 0/8") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected 0 <= I < N")
    return index, count


def _floats(text: str | None, name: str):
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"remap-extract: {name} {text!r}: expected comma-separated numbers") from None


def make_extractor(args) -> tuple[Extractor, dict]:
    """The Extractor the command line asks for, and the settings recorded in the output's `meta`."""
    options: dict[str, Any] = dict(
        batch_size=args.batch_size, workers=args.workers, resize=args.resize, bucket=args.bucket,
        draft=not args.no_draft,
    )
    scales, weights = _floats(args.scales, "--scales"), _floats(args.scale_weights, "--scale-weights")
    if args.image_size:
        options["image_size"] = tuple(int(v) for v in _floats(args.image_size, "--image-size"))
    if scales:
        options["scales"] = scales
    if weights:
        options["scale_weights"] = weights
    if args.exported:
        if args.arch or args.weights or args.checkpoint:
            raise SystemExit("remap-extract: give one of --exported, --checkpoint or --arch/--weights")
        given = [name for name, value in (("--scales", scales), ("--scale-weights", weights),
                                          ("--image-size", args.image_size), ("--dtype", args.dtype))
                 if value]
        if given or args.resize != "fixed":
            given += ["--resize"] if args.resize != "fixed" else []
            raise SystemExit(f"remap-extract: {', '.join(given)}: fixed by the exported artifact "
                             f"{args.exported}")
        extractor = Extractor.from_exported(args.exported, batch_size=args.batch_size, workers=args.workers)
        source = {"exported": os.path.abspath(args.exported), "sha256": extractor.model.digest}
    else:
        try:
            chosen = extractor_from_flags(args, **options)
        except ModelFlagsError as e:
            raise SystemExit(f"remap-extract: {e}") from None
        if chosen is None:
            raise SystemExit("remap-extract: give --arch [--weights] or --checkpoint (or --exported)")
        extractor, source = chosen
    meta = {
        **source,
        "dtype": args.dtype,
        "image_size": list(extractor.image_size),
        "resize": extractor.resize,
        "bucket": extractor.bucket,
        "scales": list(extractor.scales),
        "scale_weights": extractor.scale_weights and list(extractor.scale_weights),
        "draft": extractor.draft,
    }
    return extractor, meta


def run(args) -> dict:
    """Runs an extraction (resuming from OUT.partial.npz) and writes OUT; returns a summary dict."""
    ids, paths, bboxes = list_images(args.images)
    if args.shard is not None:
        keep = distributed.share(len(ids), *args.shard)
        ids, paths, bboxes = ([items[k] for k in keep] for items in (ids, paths, bboxes))
        if not ids:
            raise ValueError(f"--shard {args.shard[0]}/{args.shard[1]}: this share of the {len(keep)} inputs "
                             "is empty; use fewer shards than images")
    extractor, meta = make_extractor(args)
    if args.shard is not None:
        meta["shard"] = list(args.shard)
    partial = partial_path(args.out)
    own_partial = partial_file_of_process(partial) if extractor.process_share else partial
    if os.path.exists(own_partial) and args.no_resume:
        os.remove(own_partial)
    elif os.path.exists(own_partial):
        print(f"resuming from {own_partial}: {_progress_counts(own_partial)}", file=sys.stderr)
    start = time.perf_counter()
    try:
        with keeping(lambda: kept_progress(own_partial)):
            desc, done_ids, failed, described_now = describe_resumable(
                extractor, paths, ids, bboxes=bboxes, partial=partial, meta=meta, save_every=args.save_every,
                progress=not args.quiet,
                on_failed=lambda i, reason: print(f"failed: {i}: {reason}", file=sys.stderr),
            )
    except ResumeMismatchError as e:
        raise SystemExit(f"remap-extract: {e}; rerun with the same arguments, or pass --no-resume to start "
                         "over") from None
    except OSError:
        raise  # main's one line says what was kept
    except BaseException:
        if os.path.exists(own_partial):
            print(f"interrupted: progress saved to {own_partial}; rerun the same command to resume",
                  file=sys.stderr)
        raise
    elapsed = time.perf_counter() - start
    if distributed.is_main_process():
        with keeping(lambda: kept_progress(own_partial)):
            atomic.save_npz(args.out, **feature_arrays(desc, done_ids, failed, meta))
    distributed.sync_processes("remap-extract output written")
    if os.path.exists(own_partial):
        os.remove(own_partial)
    rate = described_now / elapsed if elapsed > 0 else float("nan")
    summary = {"out": args.out, "described": len(done_ids), "failed": len(failed), "dim": int(desc.shape[1]),
               "seconds": elapsed, "images_per_s": rate}
    where = f" (process {jax.process_index()} of {jax.process_count()})" if jax.process_count() > 1 else ""
    print(
        f"{'wrote' if distributed.is_main_process() else 'described for'} {args.out}: {summary['described']} "
        f"descriptors of dim {summary['dim']}, {summary['failed']} failed; {described_now} described in this "
        f"run{where} at {rate:.2f} img/s",
        file=sys.stderr,
    )
    return summary


def _progress_counts(partial: str) -> str:
    """The counts a progress file holds, in words."""
    with np.load(partial) as f:
        return f"{len(f['ids'])} described, {len(f['failed'])} failed"


def kept_progress(partial: str) -> str | None:
    """What an interrupted run leaves to resume from: `partial` and its count (None: nothing)."""
    if not os.path.exists(partial):
        return None
    return f"kept {partial} ({_progress_counts(partial)}): rerun the same command to resume"


@reports_os_errors("remap-extract")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host_memory.apply_requested()  # REMAP_JAX_RETAIN_MEMORY=1: before JAX starts its threads
    distributed.initialize_from_args(args)
    try:
        run(args)
    except (ValueError, MissingExtraError) as e:
        print(f"remap-extract: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130  # progress was saved by run(); the message says how to resume
    return 0


if __name__ == "__main__":
    sys.exit(main())
