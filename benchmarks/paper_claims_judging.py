"""The claims of `benchmarks/paper_claims.py` and how they are judged: each claim names two scored
descriptors, judged by the paired per-query Medium AP difference against its standard error; the Markdown
tables of the variants and the claims."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_report import markdown_table  # noqa: E402
from benchmarks.kl_ablation import paired_se  # noqa: E402

Z = 2.0  # a claim holds when its paired difference exceeds Z standard errors
SETUPS = ("easy", "medium", "hard")
PQ_BYTES = (16, 32, 64)
TRUNCATE_DIMS = (4, 8, 16, 64, 256)


def judge(diff: float, se: float, z: float = Z) -> str:
    """Whether a claimed improvement `diff` (variant minus baseline, claimed > 0) holds given its s.e."""
    if not math.isfinite(diff) or not math.isfinite(se):
        return "n/a"
    if se == 0.0:
        return "yes" if diff > 0 else ("no (reversed)" if diff < 0 else "not shown")
    if diff > z * se:
        return "yes"
    if diff < -z * se:
        return "no (reversed)"
    return "not shown"


@dataclasses.dataclass(frozen=True)
class Claim:
    """`better` is claimed to beat `baseline` (names of scored variants) on Medium mAP."""

    group: str
    statement: str
    better: str
    baseline: str


def claim_rows(claims: Sequence[Claim], scored: Mapping[str, dict], z: float = Z) -> list[dict]:
    """One row per claim whose two variants were scored: mAPs, the paired Medium difference, its s.e.,
    and the judgement. `scored[name]` = {"easy", "medium", "hard": mAP %, "aps": per-query Medium AP %}."""
    rows = []
    for c in claims:
        if c.better not in scored or c.baseline not in scored:
            continue
        a, b = scored[c.better], scored[c.baseline]
        diff = float(np.nanmean(a["aps"] - b["aps"]))
        se = paired_se(a["aps"], b["aps"])
        rows.append({"group": c.group, "claim": c.statement, "variant": c.better, "baseline": c.baseline,
                     **{f"{k}_variant": a[k] for k in SETUPS}, **{f"{k}_baseline": b[k] for k in SETUPS},
                     "diff_medium": round(diff, 2), "se_medium": round(se, 2), "holds": judge(diff, se, z)})
    return rows


def format_claims_table(rows: Sequence[dict]) -> str:
    """Markdown table of `claim_rows`."""
    columns = ["group", "claim", "Medium (variant)", "Medium (baseline)", "difference ± s.e.",
               "Hard (variant / baseline)", "holds?"]
    return markdown_table(columns, "llrrrrl", (
        [r["group"], r["claim"], f"{r['medium_variant']:.2f}", f"{r['medium_baseline']:.2f}",
         f"{r['diff_medium']:+.2f} ± {r['se_medium']:.2f}",
         f"{r['hard_variant']:.2f} / {r['hard_baseline']:.2f}", r["holds"]] for r in rows))


def format_variants_table(scored: Mapping[str, dict]) -> str:
    """Markdown table: every scored variant with its Easy / Medium / Hard mAP (and bytes when compact)."""
    return markdown_table(["descriptor", "dim", "bytes/image", "Easy", "Medium", "Hard"], "lrrrrr", (
        [name, s["dim"], s["bytes"], f"{s['easy']:.2f}", f"{s['medium']:.2f}", f"{s['hard']:.2f}"]
        for name, s in scored.items()))


def claims_for(last: str, taps: Sequence[str], fine_tuned: bool) -> list[Claim]:
    """The claims checked, in table order; `last` is the last tap, `taps` all of them."""
    multi = " + ".join(taps)
    out = [
        Claim("pooling", "R-MAC beats MAC (regions vs global max)", "R-MAC", "MAC"),
        Claim("pooling", "R-MAC beats SPoC", "R-MAC", "SPoC"),
        Claim("pooling", "R-MAC beats GeM (p = 3)", "R-MAC", "GeM"),
        Claim("layers", f"multi-layer R-MAC ({multi}) beats last layer ({last}), alpha = 1",
              "REMAP alpha=1", "R-MAC"),
        Claim("pooling", "KL region weights beat alpha = 1 (no whitening)", "REMAP alpha=KL",
              "REMAP alpha=1"),
        Claim("pooling", "REMAP (alpha = KL, multi-layer) beats GeM", "REMAP alpha=KL", "GeM"),
        Claim("layers", "multi-layer beats last layer (alpha = KL, Lw)", "REMAP alpha=KL + Lw",
              "REMAP alpha=KL + Lw, last layer"),
        Claim("whitening", "PCA whitening beats none", "REMAP alpha=KL + PCA", "REMAP alpha=KL"),
        Claim("whitening", "Lw beats none", "REMAP alpha=KL + Lw", "REMAP alpha=KL"),
        Claim("whitening", "Lw beats PCA whitening", "REMAP alpha=KL + Lw", "REMAP alpha=KL + PCA"),
        Claim("scales", "MS-REMAP (1 + 1.25) beats one scale", "MS-REMAP alpha=KL + Lw",
              "REMAP alpha=KL + Lw"),
    ]
    if fine_tuned:
        out.append(Claim("training", "fine-tuned beats off the shelf (both KL + Lw)", "fine-tuned REMAP",
                         "REMAP alpha=KL + Lw"))
    base = "fine-tuned REMAP" if fine_tuned else "REMAP alpha=KL + Lw"
    for m in PQ_BYTES:
        d = m // 4
        if d in TRUNCATE_DIMS:
            out.append(Claim("compact", f"PQ {m} B beats top-{d} truncation (float32, also {m} B)",
                             f"{base}, PQ {m} B", f"{base}, top-{d}"))
    return out
