"""Evaluate a retrieval model on ROxford5k / RParis6k / synthetic_landmarks (revisited protocol).

    python -m train.eval --checkpoint DIR --dataset roxford5k --out /tmp/eval
    python -m train.eval --arch resnet50 --weights resnet50.safetensors --dataset rparis6k \
        --distractors revisitop1m --qe --out /tmp/eval
    python -m train.eval --checkpoint DIR --dataset roxford5k --distractor-features 'r1m/*.npz' --out /tmp/e

prints the Easy/Medium/Hard mAP and mP@1,5,10 table and writes into ``--out``: ``results.json``,
``descriptors.npz`` (query and database vectors) and ``topk.png`` (the top-10 of a few queries: positives
green, negatives red, junk grey; Medium setup). The work is `remap_jax.evaluation.benchmark.run_eval`.

`--distractor-features` appends distractor descriptors extracted beforehand (e.g. the 1M revisitop distractors
by a sharded `remap-extract` job with the same model) to the database instead of describing them here. With
several processes (`--coordinator_address` ...) each describes its share of the images and process 0 writes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from remap_jax.describe.pipeline import RESIZE_MODES
from remap_jax.runtime import distributed, host_memory
from remap_jax.runtime.command_errors import keeping, reports_os_errors
from remap_jax.runtime.extras import require_for_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.eval", description=__doc__.split("\n\n")[0])
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="exported model directory (train.main's workdir/export)")
    model.add_argument("--arch", help="backbone for an off-the-shelf model, e.g. resnet50")
    p.add_argument("--weights", help="pretrained backbone weights (.safetensors/.npz/.pth) for --arch")
    p.add_argument("--dataset", required=True, help="roxford5k | rparis6k | synthetic_landmarks[/tiny]")
    p.add_argument("--distractors", default=None, help="revisitop1m or revisitop1m/tars_N")
    p.add_argument("--distractor-features", nargs="+", default=None, metavar="NPZ",
                   help="feature files / glob patterns (remap-extract output) appended to the database as "
                   "distractors, merged in the order given (each pattern's matches sorted); duplicate ids "
                   "fail")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (default ~/tensorflow_datasets)")
    p.add_argument("--manual-dir", default=None, help="folder with the downloaded dataset files")
    p.add_argument("--qe", action="store_true", help="alpha-query expansion")
    p.add_argument("--qe-k", type=int, default=2)
    p.add_argument("--qe-alpha", type=float, default=3.0)
    p.add_argument("--dba", action="store_true", help="alpha-database-side augmentation")
    p.add_argument("--dba-k", type=int, default=2)
    p.add_argument("--rerank", nargs="?", const="default", default=None, metavar="m=M,k=K,beta=B",
                   help="SuperGlobal re-ranking of each query's top M (after --dba and --qe); alone: the "
                   "defaults (remap_jax.search.rerank.SuperGlobal), or any of m=INT,k=INT,beta=FLOAT")
    p.add_argument("--head", default=None, help="with --arch: remap (default) | rmac | gem | mac | spoc")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="model input size (landscape; portrait images use W H); default: the checkpoint's, "
                   "or 768 1024 with --arch")
    p.add_argument("--resize", choices=RESIZE_MODES, default=None, help="how images meet the size")
    p.add_argument("--scales", type=float, nargs="+", default=None, help="multi-scale factors, e.g. 1 1.25")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-side", type=int, default=None, help="downscale images to this long side first")
    p.add_argument("--grid-queries", type=int, default=4, help="queries shown in topk.png (0: none)")
    p.add_argument("--index", choices=("exact", "scann"), default=None,
                   help="rank through a remap_jax.Index (scann: PQ codes) instead of exact ranking")
    p.add_argument("--pq-bytes", type=int, default=None, help="--index scann: PQ code bytes per image")
    p.add_argument("--leaves", type=int, default=None, help="--index scann: k-means tree partitions")
    p.add_argument("--reorder", type=int, default=None, help="--index scann: exactly re-score N candidates")
    p.add_argument("--truncate-dim", type=int, default=None, help="--index: keep the first d dimensions")
    p.add_argument("--out", required=True, help="output folder")
    distributed.add_flags(p)
    return p


def make_extractor(args):
    """The model the flags name, as a `remap_jax.Extractor`."""
    from remap_jax import Extractor

    options = {"batch_size": args.batch_size}
    if args.image_size:
        options["image_size"] = tuple(args.image_size)
    if args.resize:
        options["resize"] = args.resize
    if args.scales:
        options["scales"] = tuple(args.scales)
    if args.dtype:
        options["dtype"] = args.dtype
    if args.checkpoint:
        if args.weights or args.head:
            raise SystemExit("--weights and --head go with --arch; a --checkpoint carries its own model")
        return Extractor.from_checkpoint(args.checkpoint, **options)
    if args.head:
        options["head"] = args.head
    return Extractor.from_pretrained(args.arch, weights=args.weights, **options)


def index_options_from_args(args) -> dict | None:
    """``Index.build`` options from --pq-bytes/--leaves/--reorder/--truncate-dim (checked before any work)."""
    given = {
        name: getattr(args, name)
        for name in ("pq_bytes", "leaves", "reorder", "truncate_dim")
        if getattr(args, name, None) is not None
    }
    if args.index != "scann":
        for name in ("pq_bytes", "leaves", "reorder"):
            if name in given:
                raise SystemExit(f"--{name.replace('_', '-')}: only apply with --index scann")
    if args.index is None:
        if "truncate_dim" in given:
            raise SystemExit("--truncate-dim: needs --index exact|scann")
        return None
    return given


def rerank_from_args(args):
    """The --rerank settings as a `remap_jax.search.rerank.SuperGlobal` (None without the flag), checked
    first."""
    if args.rerank is None:
        return None
    from remap_jax.search.rerank import SuperGlobal

    try:
        return SuperGlobal.parse(args.rerank)
    except ValueError as e:
        raise SystemExit(f"--rerank {args.rerank}: {e}") from None


def kept_partial(out: str) -> str | None:
    """The database description kept in `out` as it goes (`run_eval`), in words."""
    partial = os.path.join(out, "index.partial.npz")
    if not os.path.exists(partial):
        return None
    return f"kept {partial}: rerun the same command to resume describing the database"


@reports_os_errors("python -m train.eval", exit=True)
def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    index_options = index_options_from_args(args)
    needs = {"data": ("tensorflow_datasets",)}
    if args.index == "scann":
        needs["index"] = ("scann",)
    require_for_command("python -m train.eval", needs)
    rerank = rerank_from_args(args)
    host_memory.apply_requested()  # REMAP_JAX_RETAIN_MEMORY=1: before JAX starts its threads
    distributed.initialize_from_args(args)
    from remap_jax.data import load_test_set
    from remap_jax.describe.descriptor_files import load_features
    from remap_jax.evaluation import metrics
    from remap_jax.evaluation.benchmark import run_eval

    extra = None
    if args.distractor_features:
        extra, _ = load_features(args.distractor_features)  # checked before any image is described
    test_set = load_test_set(args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir,
                             distractors=args.distractors)
    main_process = distributed.is_main_process()
    with keeping(lambda: kept_partial(args.out)):
        results = run_eval(make_extractor(args), test_set, out_dir=args.out if main_process else None,
                           max_side=args.max_side, grid_queries=args.grid_queries, progress=main_process,
                           distractors=extra, qe=args.qe, qe_k=args.qe_k, qe_alpha=args.qe_alpha,
                           dba=args.dba, dba_k=args.dba_k, index=args.index, index_options=index_options,
                           rerank=rerank)
    if not main_process:
        return results
    extras = [s for s, on in (("alpha-QE", args.qe), ("alpha-DBA", args.dba)) if on]
    if rerank is not None:
        extras.append(f"SuperGlobal M={rerank.m} K={rerank.k} beta={rerank.beta:g}")
    if "index" in results:
        info = results["index"]
        extras.append(f"{info['method']} index, {info['bytes_per_image']} bytes/image")
    title = (
        f"{test_set.name}: {test_set.num_queries} queries, {test_set.num_index} database images"
        + (f" ({test_set.num_distractors} distractors)" if test_set.num_distractors else "")
        + (f" + {len(extra)} distractors from feature files" if extra is not None else "")
        + (f", {' + '.join(extras)}" if extras else "")
    )
    print(metrics.format_revisited_table(results, title=title))
    print(f"results, descriptors and top-10 grid in {args.out} ({results['seconds']:.1f} s)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
