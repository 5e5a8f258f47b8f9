"""The `remap-eval` command: score descriptor files from `remap-extract` against labels, with no model.

    remap-extract --checkpoint W/export --images /data/products_test --out test.npz
    remap-eval --features test.npz --labels folder:/data/products_test --out /tmp/scores
    remap-eval --features db.npz --queries q.npz --labels gnd:/data/bench/gnd.json

`--labels` is a labelled folder or CSV (every image with a positive queries all the others; positives share
its label; `?queries=N&seed=S` samples N queries), printed as one "All" row with mAP, mP@1/5/10 and
R@1/5/10, or a ground-truth JSON laid out like the revisited benchmarks (Easy/Medium/Hard rows when it gives
easy/hard/junk). What was skipped (images without a descriptor, labels with one image, ...) is printed, and
with `--out` written with the scores to `results.json`. The work is `remap_jax.evaluation.score_files`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from remap_jax.runtime.command_errors import reports_os_errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="remap-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--features", nargs="+", required=True, metavar="NPZ",
                   help="feature files / glob patterns (remap-extract output) of every image (the database)")
    p.add_argument("--labels", required=True,
                   help="folder:DIR | csv:FILE (labelled; ?queries=N&seed=S) | gnd:FILE.json (query list, "
                   "database, ground truth)")
    p.add_argument("--queries", nargs="+", default=None, metavar="NPZ",
                   help="with gnd: feature files of the queries (default: looked up in --features)")
    p.add_argument("--qe", action="store_true", help="alpha-query expansion")
    p.add_argument("--qe-k", type=int, default=2)
    p.add_argument("--qe-alpha", type=float, default=3.0)
    p.add_argument("--dba", action="store_true", help="alpha-database-side augmentation")
    p.add_argument("--dba-k", type=int, default=2)
    p.add_argument("--out", default=None, help="folder for results.json (scores, per-query APs, data report)")
    return p


@reports_os_errors("remap-eval")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from remap_jax.data.labelled import DataReport
    from remap_jax.describe.descriptor_files import FeatureFileError
    from remap_jax.evaluation import metrics
    from remap_jax.evaluation.benchmark import write_results
    from remap_jax.evaluation.score_files import score_features

    if args.queries and not args.labels.startswith("gnd:"):
        raise SystemExit("remap-eval: --queries goes with --labels gnd:FILE.json; a labelled folder or CSV "
                         "queries its own images")
    try:
        results, report = score_features(args.features, args.labels, queries=args.queries, qe=args.qe,
                                         qe_k=args.qe_k, qe_alpha=args.qe_alpha, dba=args.dba,
                                         dba_k=args.dba_k)
    except (FeatureFileError, ValueError) as e:  # DatasetFileError is a ValueError
        print(f"remap-eval: {e}", file=sys.stderr)
        return 2
    print(DataReport.from_dict(report).format())
    extras = [s for s, on in (("alpha-QE", args.qe), ("alpha-DBA", args.dba)) if on]
    print(metrics.format_revisited_table(results, title=f"{args.labels}" + (f", {' + '.join(extras)}"
                                                                             if extras else "")))
    if args.out:  # written atomically; the folder is made as it is written
        write_results(os.path.join(args.out, "results.json"), {**results, "data_report": report},
                      name=args.labels)
        print(f"results in {os.path.join(args.out, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
