"""benchmarks/paper_claims*.py: the pure helpers (judgement, claim rows, tables, pool splitting)."""

import math

import numpy as np
import pytest

from benchmarks import paper_claims_judging as pc
from benchmarks import paper_claims_variants as variants


@pytest.mark.parametrize("diff, se, expected", [
    (1.0, 0.4, "yes"),            # 2.5 s.e. in the claimed direction
    (-1.0, 0.4, "no (reversed)"),
    (0.7, 0.4, "not shown"),      # 1.75 s.e.
    (-0.7, 0.4, "not shown"),
    (0.5, 0.0, "yes"),            # identical per-query differences
    (0.0, 0.0, "not shown"),
    (float("nan"), 0.3, "n/a"),
])
def test_judge(diff, se, expected):
    assert pc.judge(diff, se) == expected


def _scored(aps, maps=(50.0, 40.0, 20.0)):
    return {"easy": maps[0], "medium": maps[1], "hard": maps[2], "aps": np.asarray(aps, np.float64),
            "dim": 8, "bytes": 32}


def test_claim_rows_pair_per_query_differences_and_skip_missing_variants():
    base = _scored([10.0, 20.0, 30.0, np.nan])
    better = _scored([12.0, 23.0, 31.0, 50.0], maps=(55.0, 45.0, 25.0))
    claims = [pc.Claim("g", "B beats A", "B", "A"), pc.Claim("g", "C beats A", "C", "A")]
    rows = pc.claim_rows(claims, {"A": base, "B": better})
    assert len(rows) == 1  # C was not scored
    r = rows[0]
    d = np.array([2.0, 3.0, 1.0])  # the query without a baseline AP is left out of the pairing
    assert r["diff_medium"] == pytest.approx(d.mean(), abs=0.005)
    assert r["se_medium"] == pytest.approx(d.std(ddof=1) / math.sqrt(3), abs=0.005)
    assert r["holds"] == "yes" and r["medium_variant"] == 45.0 and r["medium_baseline"] == 40.0
    table = pc.format_claims_table(rows)
    assert table.splitlines()[2] == "| g | B beats A | 45.00 | 40.00 | +2.00 ± 0.58 | 25.00 / 20.00 | yes |"
    assert "| B | 8 | 32 | 55.00 | 45.00 | 25.00 |" in pc.format_variants_table({"B": better})


def test_split_pools_renormalises_each_part():
    rng = np.random.default_rng(0)
    parts = [variants.l2(rng.normal(size=(4, 5))) for _ in range(3)]
    joined = variants.l2(np.concatenate(parts, axis=1))  # what the extractor returns: L2 over the whole row
    split = variants.split_pools(joined)
    for name, part in zip(("MAC", "SPoC", "GeM"), parts, strict=True):
        np.testing.assert_allclose(split[name], part, atol=1e-6)


def test_claims_name_compact_rows_at_equal_bytes():
    claims = pc.claims_for("head", ("blocks.15", "head"), fine_tuned=True)
    compact = [c for c in claims if c.group == "compact"]
    assert [c.better for c in compact] == [f"fine-tuned REMAP, PQ {m} B" for m in pc.PQ_BYTES]
    assert [c.baseline for c in compact] == [f"fine-tuned REMAP, top-{m // 4}" for m in pc.PQ_BYTES]
    assert any(c.group == "training" for c in claims)
    assert not any(c.group == "training" for c in pc.claims_for("head", ("head",), fine_tuned=False))
