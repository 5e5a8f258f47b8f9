"""The demo collection for `remap-serve --demo`: the demo's test split as image files, and its index (made
by running `remap-extract` and `remap-index`, hence among the commands).

`prepare_demo(workdir)` writes the `synthetic_landmarks/hard` test split (built into TFDS on first use) as
`WORKDIR/images/db_NNNN.jpg` (the 756 database images, what is indexed) and `WORKDIR/queries/q_NN.jpg`
(the 76 queries cropped to their boxes: images to try; not indexed), then describes the folder with
`remap-extract` and indexes it with `remap-index build` (exact), both run through their own code. The index
folder is named after the model's fingerprint (`Extractor.fingerprint`), so a different model (the demo's
trained export appearing later) gets its own index instead of a mismatched one.
"""

from __future__ import annotations

import os

from remap_jax.data.images import encode_jpeg
from remap_jax.runtime import atomic

__all__ = ["DEMO_DATASET", "DEMO_EXPORT", "demo_model_flags", "prepare_demo", "write_demo_images"]

DEMO_DATASET = "synthetic_landmarks/hard"
DEMO_EXPORT = "/tmp/remap_demo/export"  # where README command 1 (the main job) exports its trained model
_DONE = ".complete"


def demo_model_flags(export: str | None = DEMO_EXPORT) -> list[str]:
    """`remap-extract` model flags of the demo: its trained export when present, else ImageNet
    EfficientNet-Lite0 (installed weights) as the demo evaluates it off the shelf (192x256, 3 levels)."""
    if export and os.path.isfile(os.path.join(export, "config.json")):
        return ["--checkpoint", export]
    return ["--arch", "efficientnet_lite0", "--weights", "installed", "--levels", "3",
            "--image-size", "192,256"]


def write_demo_images(workdir: str, dataset: str = DEMO_DATASET, data_dir: str | None = None
                      ) -> tuple[str, str]:
    """Writes the test split's database and query images once (a marker file records completion);
    returns (images folder, queries folder). `data_dir`: TFDS's (default ~/tensorflow_datasets)."""
    images, queries = os.path.join(workdir, "images"), os.path.join(workdir, "queries")
    done = os.path.join(images, _DONE)
    if os.path.isfile(done):
        with open(done) as f:
            written = f.read().strip()
        if written != dataset:
            raise ValueError(f"--workdir {workdir}: holds the images of {written}, not {dataset}; use "
                             "another workdir")
        return images, queries
    from remap_jax.data.loaders import load_test_set

    test = load_test_set(dataset, data_dir=data_dir)
    os.makedirs(images, exist_ok=True)
    os.makedirs(queries, exist_ok=True)
    width = len(str(test.num_index - 1))
    print(f"remap-serve --demo: writing {test.num_index} database and {test.num_queries} query images of "
          f"{dataset} to {workdir}")
    for i in range(test.num_index):
        with atomic.atomic_write(os.path.join(images, f"db_{i:0{width}d}.jpg")) as f:
            f.write(encode_jpeg(test.read_index(i), quality=95))
    for q in range(test.num_queries):
        with atomic.atomic_write(os.path.join(queries, f"q_{q:02d}.jpg")) as f:
            f.write(encode_jpeg(test.read_query(q), quality=95))
    with atomic.atomic_write(os.path.join(images, _DONE), "w") as f:
        f.write(dataset + "\n")
    return images, queries


def prepare_demo(workdir: str, model_flags: list[str], fingerprint: str, dataset: str = DEMO_DATASET,
                 data_dir: str | None = None) -> tuple[str, str]:
    """The demo's (index folder, images folder) under `workdir`, written and built if missing."""
    from remap_jax.cli import extract as extract_cli
    from remap_jax.cli import index as index_cli

    os.makedirs(workdir, exist_ok=True)
    images, _ = write_demo_images(workdir, dataset, data_dir)
    index = os.path.join(workdir, f"index-{fingerprint}")
    if os.path.isfile(os.path.join(index, "index.json")):
        return index, images
    features = os.path.join(workdir, f"features-{fingerprint}.npz")
    if not os.path.isfile(features):
        args = extract_cli.build_parser().parse_args(
            [*model_flags, "--images", images, "--out", features, "--batch-size", "4", "--workers", "2"])
        extract_cli.run(args)
    index_cli.run(["build", "--features", features, "--out", index])
    return index, images
