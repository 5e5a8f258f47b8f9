"""The benchmark suite's sizes: what each block measures under the `full` (accelerator), `quick` (a 2-core
CPU) and `tiny` (structure check) presets (see `benchmarks/suite.py`)."""

from __future__ import annotations

import rerank_bench  # numpy only at import

LITES = tuple(f"efficientnet_lite{i}" for i in range(5))


def preset(name: str, on_cpu: bool) -> dict:
    """The sizes of every block for preset `name` ("full", "quick" or "tiny")."""
    if name == "tiny":
        return {
            "roi_pool": {"shapes": [("stage5 tiny", (2, 6, 8, 16))], "dtypes": ["float32", "bfloat16"],
                         "methods": ["slices", "gather"], "levels": 2, "repeats": 1},
            "extract": {"pairs": [("resnet18", 1)], "dtypes": ["float32", "bfloat16"], "size": (32, 64),
                        "repeats": 1},
            "train_step": {"archs": ["resnet18"], "size": (32, 32), "tuples": 8, "negatives": 1,
                           "dtypes": ["float32"], "repeats": 1},
            "exact_search": {"n": 4096, "dim": 32, "queries": 16, "k": 10},
            "ranking": {"n": 4096, "dim": 32, "queries": 8},
            "rerank": rerank_bench.SUITE_PRESETS["tiny"],
            "input": {"arch": "resnet18", "dtype": "float32", "batch": 4, "size": (32, 64), "images": 8,
                      "photos": 2, "sources": [("64x32", (32, 64)), ("256x128", (128, 256))], "repeats": 1},
        }
    if name == "quick":  # a 2-core CPU within 10 minutes
        return {
            "roi_pool": {"shapes": [("stage5 @1024x768", (8, 24, 32, 2048)),
                                    ("stage4 @1024x768", (8, 48, 64, 1024))],
                         "dtypes": ["float32", "bfloat16"], "methods": ["slices", "gather"], "levels": 4,
                         "repeats": 3},
            "extract": {"pairs": [("resnet50", 1), ("efficientnet_lite0", 1), ("resnet101", 1)],
                        "dtypes": ["float32", "bfloat16"], "size": (768, 1024), "repeats": 2},
            "train_step": {"archs": ["resnet50"], "size": (128, 160), "tuples": 8, "negatives": 1,
                           "dtypes": ["float32", "bfloat16"], "repeats": 2},
            "exact_search": {"n": 200_000, "dim": 512, "queries": 200, "k": 100},
            "ranking": {"n": 200_000, "dim": 512, "queries": 70},
            "rerank": rerank_bench.SUITE_PRESETS["quick"],
            "input": {"arch": "efficientnet_lite0", "dtype": "float32", "batch": 4, "size": (768, 1024),
                      "images": 8, "photos": 4, "repeats": 1,
                      "sources": [("1024x768", (768, 1024)), ("12 MP 4032x3024", (3024, 4032))]},
        }
    batch = 8 if on_cpu else 32
    return {
        "roi_pool": {"shapes": [("stage5 @1024x768", (batch, 24, 32, 2048)),
                                ("stage4 @1024x768", (batch, 48, 64, 1024))],
                     "dtypes": ["float32", "bfloat16"], "levels": 4, "repeats": 20,
                     # the lowering `method="auto"` takes on this backend first
                     "methods": ["slices", "gather"] if on_cpu else ["gather", "slices"]},
        # (arch, batch) in priority order: ResNets at every batch size, the Lite family at 32, then at 1, 8
        "extract": {"pairs": [(a, b) for a in ("resnet50", "resnet101") for b in (1, 8, 32)]
                    + [(lite, b) for b in (32, 1, 8) for lite in LITES],
                    "dtypes": ["float32", "bfloat16"], "size": (768, 1024), "repeats": 10},
        "train_step": {"archs": ["resnet50", "resnet101"], "size": (384, 512), "tuples": 8, "negatives": 1,
                       "dtypes": ["float32", "bfloat16"], "repeats": 5},
        "exact_search": {"n": 1_000_000, "dim": 512, "queries": 1000, "k": 100},
        "ranking": {"n": 1_000_000, "dim": 512, "queries": 70},
        "rerank": rerank_bench.SUITE_PRESETS["full"],
        # the question: can 16 host cores feed ResNet-101 in bfloat16 at 1024x768 on an H100?
        "input": {"arch": "resnet101", "dtype": "bfloat16", "batch": batch, "size": (768, 1024),
                  "images": 3 * batch, "photos": 8, "repeats": 1,
                  "sources": [("1024x768", (768, 1024)), ("12 MP 4032x3024", (3024, 4032))]},
    }
