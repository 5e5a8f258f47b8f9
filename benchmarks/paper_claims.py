"""The REMAP paper's relative claims, measured on real (ImageNet-pretrained) features of the demo data.

Each claim compares two descriptors of the same test images (the demo's `synthetic_landmarks/hard` test
split unless --config says otherwise) and is judged by the paired per-query Medium AP difference against its
standard error (`paired_se`): "yes" when the difference is more than Z = 2 standard errors in the claimed
direction, "no (reversed)" when more than Z the other way, "not shown" in between.

    python benchmarks/paper_claims.py --quick                    # a few minutes: no MS-REMAP, fewer pairs
    python benchmarks/paper_claims.py --export /tmp/remap_demo/export    # full; fine-tuned = that export
    python benchmarks/paper_claims.py                            # full; trains the demo config first
    python benchmarks/paper_claims.py --archs efficientnet_lite0 efficientnet_lite2 --json claims.json

Claims (the paper's rows, on these features):
  pooling     MAC / SPoC / GeM (p = 3) of the last tap vs R-MAC; R-MAC vs REMAP alpha = 1 (multi-layer);
              REMAP alpha = 1 vs alpha = KL; all without whitening.
  layers      last tap only vs all taps (REMAP alpha = KL + Lw; and R-MAC vs REMAP alpha = 1 above).
  whitening   none vs PCA vs Lw (REMAP alpha = KL), learned on the TRAINING split only.
  scales      single scale vs MS-REMAP (scales 1 and 1.25, descriptors summed, then L2).
  training    off the shelf (REMAP alpha = KL + Lw: what the demo starts from) vs fine-tuned (the demo's
              exported model: --export DIR, else the benchmark runs the demo config's training first).
  compact     product quantisation (16 / 32 / 64 bytes, ScaNN codes only, 256 centroids per sub-vector) and
              top-d truncation vs the full descriptor, and PQ vs truncation at equal bytes.

How images are described: one `remap_jax.Extractor` per network and size. Its `.regions()` gives the
L2-normalised R-MAC region vectors of every tap, from which every region-based variant is pooled with
`remap_jax.fit.head_init.pool_descriptors` (what `REMAPHead` computes; the tests check it), so those variants
never re-describe an image; KL weights and whitening come from `remap_jax.fit.head_init.compute_head_init` on
the training split's region vectors, exactly as the trainer's head initialisation does (same pairs, options
and out_dim as the config). MAC / SPoC / GeM need the whole map, which region vectors do not keep: one more
pass per test image at scale 1 through an extractor whose head (`GlobalPools`) returns the three of them
concatenated. MS-REMAP adds a region pass at 1.25x. Test descriptions are cached in --workdir (keyed by the
extractor's fingerprint), as are the training regions (`head_regions.describe_regions`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.kl_ablation import load_config  # noqa: E402
from benchmarks.paper_claims_judging import (  # noqa: E402
    Z,
    claim_rows,
    claims_for,
    format_claims_table,
    format_variants_table,
)
from benchmarks.paper_claims_variants import (  # noqa: E402
    compact_variants,
    fine_tuned_descriptors,
    network_variants,
    score,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="train/configs/demo.py",
                        help="the demo config (data, image size, taps, head-initialisation options)")
    parser.add_argument("--workdir", default="/tmp/remap_paper_claims", help="caches (and a demo run)")
    parser.add_argument("--archs", nargs="+", default=None,
                        help="networks (default: the config's); each needs its pip weights package")
    parser.add_argument("--export", default="", help="the demo's exported model (WORKDIR/export); default: "
                        "train the config here (full run) or skip the fine-tuned rows (--quick)")
    parser.add_argument("--quick", action="store_true", help="fewer training pairs, no MS-REMAP, no training")
    parser.add_argument("--pq-bits", type=int, default=8, choices=(4, 8),
                        help="bits per PQ sub-vector code: 8 = 256 centroids (the paper), 4 = ScaNN's lut16")
    parser.add_argument("--json", default="", help="write every table here")
    args = parser.parse_args(argv)

    import jax

    from remap_jax.runtime.distributed import use_cpu_cores

    use_cpu_cores()  # one device per core on a CPU host, as the commands (before anything touches a device)
    from remap_jax.data import load_test_set, load_training_set
    from remap_jax.nn.backbones import default_taps

    t_start = time.perf_counter()
    config = load_config(args.config)
    train_set = load_training_set(config.dataset, data_dir=config.data_dir or None)
    test_set = load_test_set(config.test_dataset, data_dir=config.data_dir or None)
    archs = args.archs or [config.model.arch]
    report: dict = {"config": args.config, "quick": args.quick, "z": Z, "networks": []}
    for arch in archs:
        taps = tuple(config.model.taps) if arch == config.model.arch else default_taps(arch)
        t0 = time.perf_counter()
        descs, info = network_variants(config, arch, taps, args, test_set, train_set)
        scored = {name: score(q, db, test_set) for name, (q, db) in descs.items()}
        fine = None
        if arch == config.model.arch:
            fine, info["fine_tuned"] = fine_tuned_descriptors(config, args, test_set)
            if fine is not None:
                scored["fine-tuned REMAP"] = score(*fine, test_set)
        compact_base = "fine-tuned REMAP" if fine is not None else "REMAP alpha=KL + Lw"
        q, db = fine if fine is not None else descs["REMAP alpha=KL + Lw"]
        scored.update(compact_variants(compact_base, q, db, test_set, args.pq_bits))
        rows = claim_rows(claims_for(taps[-1], taps, fine is not None), scored)
        info["seconds"]["total"] = round(time.perf_counter() - t0, 1)

        h, w = info["image_size"]
        print(f"\n{arch} (ImageNet; fine-tuned model: {info.get('fine_tuned', 'none')}), taps "
              f"{' + '.join(taps)}, test {config.test_dataset!r} at {h}x{w}"
              f", {info['num_regions']} regions per layer (levels {info['levels']}"
              f"{' + whole map' if info['include_global'] else ''}); KL + whitening from "
              f"{info['num_positive_pairs']} matching / {info['num_negative_pairs']} non-matching training "
              f"pairs over {info['num_train_images']} training images; {test_set.num_queries} queries")
        print(format_variants_table(scored))
        print()
        print(format_claims_table(rows))
        print(f"(difference: mean paired per-query Medium AP difference, variant - baseline, ± its standard "
              f"error; holds = beyond {Z:g} s.e. in the claimed direction)")
        report["networks"].append({**info, "variants": {k: {kk: vv for kk, vv in v.items() if kk != "aps"}
                                                        for k, v in scored.items()}, "claims": rows})
    machine = f"{platform.machine()} {os.cpu_count()} cpus, {jax.devices()[0].platform} x{len(jax.devices())}"
    total = time.perf_counter() - t_start
    print(f"\n{machine}; load average at the end {os.getloadavg()[0]:.1f}; total {total:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**report, "machine": machine, "seconds": round(total, 1)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
