"""Write a built-in ``synthetic_landmarks`` config out as a user would bring their own images.

    python tools/export_demo_as_folder.py --config hard --out /tmp/demo_as_folder

writes, from the built TFDS records (the stored JPEG bytes, copied byte for byte, so every pixel is the
same), under ``--out``:

* ``train/<label>/<split>_<i>.jpg`` -- the ``train`` and ``val`` splits as a folder tree, one folder per
  landmark (``lm_0042``). Views of split difficulty ``junk`` (the landmark barely visible: the built-in set
  keeps them out of its pairs) are left out, as a user would not label them.
* ``train.csv`` -- the same images as ``path,label,split`` (``split`` = train / val: the built-in split).
* ``test/gnd.json`` + ``test/jpg/`` -- the test split laid out like the revisited benchmarks: queries (stored
  cropped to their box), database (distractors included), per-query easy/hard/junk positions. Loaded as
  ``gnd:OUT/test/gnd.json`` it is the built-in benchmark, image for image.
* ``test_labelled/<label>/`` -- the test database as a labelled folder (each distractor its own one-image
  label), for the labelled protocol (each image queries the rest; mAP, mP@k, Recall@k).

Train from it with the demo's settings::

    python -m train.main --config=train/configs/demo.py --workdir=/tmp/w_csv \\
        --config.dataset=csv:OUT/train.csv --config.test_dataset=gnd:OUT/test/gnd.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys


def _records(builder, split: str):
    import tensorflow_datasets as tfds

    decoders = {"image": tfds.decode.SkipDecoding()}
    source = builder.as_data_source(split, decoders=decoders)
    for i in range(len(source)):
        yield i, source[i]


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def export(config: str, out: str, data_dir: str | None = None) -> dict:
    """Writes the layout of the module doc under ``out``; returns counts per part."""
    from remap_jax.data.records import get_builder, prepare
    from remap_jax.data.synthetic.config import JUNK

    builder = prepare(get_builder(f"synthetic_landmarks/{config}", data_dir))
    rows, counts = [], {}
    for split in ("train", "val"):
        if split not in builder.info.splits:
            continue
        n = 0
        for i, r in _records(builder, split):
            difficulty = r["difficulty"]
            if (difficulty.decode() if isinstance(difficulty, bytes) else str(difficulty)) == JUNK:
                continue
            rel = f"train/lm_{int(r['label']):04d}/{split}_{i:05d}.jpg"
            _write(os.path.join(out, rel), r["image"])
            rows.append((rel, f"lm_{int(r['label']):04d}", split))
            n += 1
        counts[split] = n
    with open(os.path.join(out, "train.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)

    imlist, qimlist = [], []
    for i, r in _records(builder, "index"):
        name = f"index_{i:05d}"
        _write(os.path.join(out, "test", "jpg", f"{name}.jpg"), r["image"])
        label = int(r["label"])
        folder = f"lm_{label:04d}" if label >= 0 else f"distractor_{i:05d}"
        _write(os.path.join(out, "test_labelled", folder, f"{name}.jpg"), r["image"])
        imlist.append(name)
    for i, r in _records(builder, "query"):
        name = f"query_{i:05d}"
        _write(os.path.join(out, "test", "jpg", f"{name}.jpg"), r["image"])  # stored cropped to its box
        qimlist.append(name)
    gnd = [{k: list(map(int, g[k])) for k in ("easy", "hard", "junk")} for g in builder.info.metadata["gnd"]]
    with open(os.path.join(out, "test", "gnd.json"), "w") as f:
        json.dump({"qimlist": qimlist, "imlist": imlist, "gnd": gnd}, f)
    counts.update(queries=len(qimlist), database=len(imlist))
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="hard", help="synthetic_landmarks config (default, hard, tiny, ...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (default ~/tensorflow_datasets)")
    args = p.parse_args(argv)
    counts = export(args.config, args.out, args.data_dir)
    print(f"wrote {args.out}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
