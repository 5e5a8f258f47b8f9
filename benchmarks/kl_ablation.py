"""Evidence for the entropy-guided pooling: off-the-shelf mAP with alpha = 1 (R-MAC) vs alpha = KL weights.

Everything else is held fixed: the same backbone (the one `train.main` starts from: `config.model.pretrained`
when set, otherwise randomly initialised from `config.seed`), the same taps, regions, images and training
pairs; for each whitening method the whitening is learned by the same procedure on the same training images,
from the descriptors pooled with the alpha under test (that is what `train.init_head` does). Rows: whitening
none / PCA / Lw; columns: revisited-protocol mAP (Easy / Medium / Hard) of the test set for alpha = 1 and
alpha = KL (histogram and, unless --quick, KDE estimator), and the difference.

    python benchmarks/kl_ablation.py --quick                   # demo dataset, fewer pairs, histogram only
    python benchmarks/kl_ablation.py                           # demo dataset, both estimators
    python benchmarks/kl_ablation.py --config=train/configs/NAME.py --workdir=DIR   # real data if present
    ... --json results.json

Descriptors are computed once per image (region descriptors through `remap_jax.Extractor.regions`, cached in
--workdir like train.init_head does), then pooled per variant with `remap_jax.fit.head_init.pool_descriptors`,
which the tests check equals `REMAPHead`.
Test images are described at `config.test_image_size` when its region grid has the same number of regions as
the training size, else at `config.image_size` (alphas are per region index); the output says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remap_jax.data.images import ImageList  # noqa: E402
from remap_jax.evaluation import metrics  # noqa: E402
from remap_jax.fit import head_init, head_regions, whitening  # noqa: E402
from remap_jax.nn.regions import num_regions  # noqa: E402
from remap_jax.search import ranking  # noqa: E402


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("ablation_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def pooled(region_desc, alpha, layers):
    return head_init.pool_descriptors(region_desc, alpha, layers)


def l2(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-6)


def fit_whitening(method: str, x: np.ndarray, positives: np.ndarray, out_dim: int, ridge: float):
    dim = out_dim or x.shape[1]
    if method == "pca":
        return whitening.pca_whitening(x, dim=dim, ridge=ridge)
    if method == "lw":
        return whitening.learned_whitening(x, positives[:, 0], positives[:, 1], dim=dim, ridge=ridge)
    return None


def score(qvecs, dbvecs, gnd) -> tuple[dict, np.ndarray]:
    """mAP (%) per setup, and the per-query AP (%) of the main setup (Medium, or the only one)."""
    ranks = ranking.rank_database(qvecs, dbvecs)
    if gnd and "easy" in gnd[0]:
        res = metrics.evaluate_revisited(ranks, gnd)
        return {k: round(float(res[k]["mAP"]), 2) for k in ("easy", "medium", "hard")}, res["medium"]["aps"]
    m, aps, _, _ = metrics.compute_map(ranks, gnd)
    return {"mAP": round(100.0 * float(m), 2)}, 100.0 * aps


def paired_se(aps: np.ndarray, base_aps: np.ndarray) -> float:
    """Standard error of the mean per-query AP difference (queries scored in both)."""
    d = (aps - base_aps)[~np.isnan(aps) & ~np.isnan(base_aps)]
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="train/configs/demo.py")
    parser.add_argument("--workdir", default="/tmp/remap_kl_ablation")
    parser.add_argument("--quick", action="store_true", help="fewer pairs, histogram estimator only")
    parser.add_argument("--json", default="", help="write the rows to this file")
    parser.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="override config.image_size (and the test size) for a finer region grid")
    parser.add_argument("--levels", type=int, default=None, help="override config.model.levels")
    parser.add_argument("--export", default="", help="use the backbone of a trained model exported by "
                        "train.main (WORKDIR/export) instead of the off-the-shelf one")
    args = parser.parse_args(argv)

    import jax

    from remap_jax.data import load_test_set, load_training_set
    from remap_jax.describe.extractor import Extractor
    from remap_jax.model import load_exported, model_from_config
    from train.build import init_options, initial_variables, model_spec

    config = load_config(args.config)
    if args.image_size:
        config.image_size = config.test_image_size = tuple(args.image_size)
    if args.levels:
        config.model.levels = args.levels
    config.head_init = ""
    spec = model_spec(config)
    if args.export:
        variables = load_exported(args.export)[1]
    else:
        variables = initial_variables(model_from_config(spec), config, jax.random.key(config.seed))
    options = init_options(config)
    if args.quick:
        options = dataclasses.replace(options, num_positive_pairs=min(options.num_positive_pairs, 400))
    estimators = ("histogram",) if args.quick else ("histogram", "kde")
    layers = tuple(config.model.taps)
    t0 = time.perf_counter()

    def extractor(size, resize):
        return Extractor.from_config(spec, variables, image_size=size, resize=resize,
                                     batch_size=config.describe_batch_size, workers=config.num_workers)

    # Training pairs -> region descriptors (cached) -> KL alphas.
    train_set = load_training_set(config.dataset, data_dir=config.data_dir or None)
    images, pos, neg = head_init.select_pairs(train_set.labels, train_set.qidx, train_set.pidx,
                                              options.num_positive_pairs, options.negatives_per_positive,
                                              config.seed)
    size = tuple(config.image_size)
    train_extractor = extractor(size, "exact")
    feature_shape, regions = head_regions.feature_grid(train_extractor, layers)
    train_desc = head_regions.describe_regions(
        train_extractor, train_set.read, images, layers, cache_dir=os.path.join(args.workdir, "region_cache"),
        cache_chunk=options.cache_chunk,
        cache_key=head_regions.region_cache_key(train_extractor, train_set, config.dataset),
        cache_dtype=options.cache_dtype)
    alphas = {"1 (R-MAC)": np.ones((len(layers), regions.shape[0]), np.float32)}
    for est in estimators:
        o = dataclasses.replace(options, estimator=est, whitening="none")
        init = head_init.compute_head_init(train_desc, pos, neg, layers, regions, feature_shape, options=o)
        alphas[f"KL ({est})"] = init.alpha
    print(f"KL alphas (histogram), mean 1 over {regions.shape[0]} regions x {len(layers)} layers: min "
          f"{alphas['KL (histogram)'].min():.3f} max {alphas['KL (histogram)'].max():.3f}")

    # Test set, described at a size whose region grid matches the alphas.
    test_set = load_test_set(config.test_dataset, data_dir=config.data_dir or None)
    test_size = tuple(config.test_image_size)
    stride_h, stride_w = size[0] / feature_shape[0], size[1] / feature_shape[1]
    test_map = (int(round(test_size[0] / stride_h)), int(round(test_size[1] / stride_w)))
    if num_regions(*test_map, levels=config.model.levels,
                   include_global=config.model.include_global) != regions.shape[0]:
        print(f"note: test size {test_size} gives a different region count than {size}; describing the test "
              f"set at {size}")
        test_size = size
    test_extractor = extractor(test_size, "fixed")
    q_desc = test_extractor.regions(ImageList(test_set.read_query, test_set.num_queries), progress=True)
    db_desc = test_extractor.regions(ImageList(test_set.read_index, test_set.num_index), progress=True)
    t1 = time.perf_counter()

    rows, query_aps = [], []
    for method in ("none", "pca", "lw"):
        for name, alpha in alphas.items():
            x = pooled(train_desc, alpha, layers)
            wb = fit_whitening(method, x, pos, config.model.out_dim, options.whitening_ridge)
            q, db = pooled(q_desc, alpha, layers), pooled(db_desc, alpha, layers)
            if wb is None:
                q, db = l2(q), l2(db)
            else:
                q, db = whitening.apply_whitening(q, *wb), whitening.apply_whitening(db, *wb)
            maps, aps = score(q, db, test_set.gnd)
            rows.append({"whitening": method, "alpha": name, **maps})
            query_aps.append(aps)
    t2 = time.perf_counter()

    keys = [k for k in rows[0] if k not in ("whitening", "alpha")]
    main_key = "medium" if "medium" in keys else keys[0]
    base = {r["whitening"]: (r, a) for r, a in zip(rows, query_aps, strict=True)
            if r["alpha"].startswith("1")}
    for r, a in zip(rows, query_aps, strict=True):
        r[f"se_diff_{main_key}"] = round(paired_se(a, base[r["whitening"]][1]), 2)
    print()
    backbone = (f"trained backbone from {args.export}" if args.export else
                f"off-the-shelf ({config.model.pretrained or f'random init, seed {config.seed}'})")
    print(f"alpha = 1 vs alpha = KL, {config.model.arch} {backbone}, taps {', '.join(layers)}, "
          f"{regions.shape[0]} regions, {len(pos)} matching / {len(neg)} non-matching training pairs over "
          f"{len(images)} images of {config.dataset!r}; test {config.test_dataset!r} at {test_size}")
    print(f"| whitening | alpha | {' | '.join(k + ' mAP' for k in keys)} | "
          f"{' | '.join('vs alpha=1 ' + k for k in keys)} |")
    print("|" + "---|" * (2 + 2 * len(keys)))
    for r in rows:
        b = base[r["whitening"]][0]
        diffs = [f"{r[k] - b[k]:+.2f}" + (f" ± {r[f'se_diff_{k}']:.2f}" if k == main_key and r is not b
                                          else "") for k in keys]
        print(f"| {r['whitening']} | {r['alpha']} | {' | '.join(f'{r[k]:.2f}' for k in keys)} | "
              f"{' | '.join(diffs)} |")
    print(f"(± : standard error of the paired per-query {main_key} AP difference over "
          f"{int(np.sum(~np.isnan(query_aps[0])))} queries)")
    machine = f"{platform.machine()} {os.cpu_count()} cpus, {jax.devices()[0].platform} x{len(jax.devices())}"
    print(f"\n{machine}; describe {t1 - t0:.1f} s, pool + whiten + rank {t2 - t1:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "machine": machine, "config": args.config, "quick": args.quick,
                       "num_positive_pairs": int(len(pos)), "num_negative_pairs": int(len(neg)),
                       "num_images": int(len(images)), "test_size": list(test_size),
                       "backbone": backbone, "image_size": list(size), "levels": config.model.levels,
                       "num_regions": int(regions.shape[0])}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
