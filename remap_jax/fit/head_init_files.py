"""The head initialisation's folder: writing and reading what `remap_jax.fit.initialise.initialise_head`
writes.

Files (`write_outputs`):
  head_init.npz        alpha/<layer> (R,), whitening_W (d, D), whitening_b (d,), and for the record layers,
                       kl (L, R) raw KL in nats, regions (R, 4), feature_shape (h, w): what a training
                       config's `head_init` points at (`load_head_init` reads it back).
  head_params.msgpack  the head's parameter tree ({"stream_<layer>": {"alpha"}, "whiten": {"kernel",
                       "bias"}}) in flax msgpack, ready to drop into `variables["params"]["head"]`.
  region_weights.png   the alphas laid out on the feature-map grid, one row per layer, one column per scale.
  init_head.json       a summary (pairs, images, timings, KL statistics).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from remap_jax.fit import kl
from remap_jax.fit.head_init import HeadInit
from remap_jax.runtime import atomic
from remap_jax.runtime.extras import require

__all__ = ["head_param_tree", "load_head_init", "save_head_init", "save_region_weight_png", "write_outputs"]


def head_param_tree(init: HeadInit) -> dict:
    """The head's parameters in `REMAPHead`'s layout (the Dense kernel is W.T): `head_params` of
    `remap_jax.model.init_variables`."""
    from remap_jax.nn.heads import stream_name

    tree: dict = {stream_name(layer): {"alpha": np.asarray(a, np.float32)} for layer, a in
                  init.alpha_init.items()}
    if init.w is not None:
        tree["whiten"] = {"kernel": np.ascontiguousarray(init.w.T), "bias": init.b}
    return tree


def save_head_init(path: str, init: HeadInit) -> None:
    """Write `init` as an .npz (atomically) in the layout `load_head_init` reads.

    Keys: `alpha/<layer>` (R,) per layer, `whitening_W` (d, D) and `whitening_b` (d,) when whitening was
    fitted, plus `layers`, `kl` (L, R) raw KL in nats, `regions` (R, 4) and `feature_shape` (2,) for the
    record and the heatmap.
    """
    arrays = {f"alpha/{layer}": a for layer, a in init.alpha_init.items()}
    arrays.update(layers=np.array(init.layers), kl=init.kl, regions=init.regions,
                  feature_shape=np.array(init.feature_shape))
    if init.w is not None:
        arrays.update(whitening_W=init.w, whitening_b=init.b)
    atomic.save_npz(path, **arrays)


def load_head_init(path: str, layers: Sequence[str] | None = None) -> HeadInit:
    """Read a `head_init.npz`; with `layers`, check it was computed for those layers (in that order)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"head_init: {path} does not exist; write it with "
                                "`python -m train.init_head --config=... --workdir=DIR` (DIR/head_init.npz)")
    with np.load(path, allow_pickle=False) as f:
        missing = {"layers", "kl", "regions", "feature_shape"} - set(f.files)
        if missing:
            raise ValueError(f"head_init: {path} lacks {sorted(missing)}; is it a train.init_head output?")
        stored = tuple(str(s) for s in f["layers"])
        alpha = np.stack([f[f"alpha/{layer}"] for layer in stored])
        has_w = "whitening_W" in f.files
        init = HeadInit(stored, alpha, f["kl"], f["whitening_W"] if has_w else None,
                        f["whitening_b"] if has_w else None, f["regions"],
                        tuple(int(v) for v in f["feature_shape"]))
    if layers is not None and tuple(layers) != stored:
        raise ValueError(f"head_init {path!r}: computed for layers {list(stored)}, but the model taps "
                         f"{list(layers)}; rerun train.init_head with this config")
    return init


def save_region_weight_png(path: str, init: HeadInit, title: str = "KL region weights (alpha)") -> None:
    """Heatmap of the alphas on the feature-map grid: one row per layer, one column per region scale.

    Each cell shows the mean alpha of the regions of that scale covering it; the colour scale is shared,
    region outlines are drawn and each region's alpha is printed at its centre.
    """
    matplotlib = require("matplotlib", "train", "the region-weight plot (region_weights.png)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    h, w = init.feature_shape
    per_layer = [kl.region_weight_maps(init.alpha[i], init.regions, h, w) for i in range(len(init.layers))]
    cols = max(len(m) for m in per_layer)
    vmin, vmax = float(np.min(init.alpha)), float(np.max(init.alpha))
    fig, axes = plt.subplots(len(init.layers), cols, squeeze=False,
                             figsize=(3.2 * cols * max(w / h, 0.5), 3.0 * len(init.layers) + 0.6))
    image = None
    for i, (layer, maps) in enumerate(zip(init.layers, per_layer, strict=True)):
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(maps):
                ax.axis("off")
                continue
            size, grid = maps[j]
            image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
            for (y0, x0, rh, rw), a in zip(init.regions, init.alpha[i], strict=True):
                if (int(rh), int(rw)) == size:
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), rw, rh, fill=False, lw=0.6, ec="white"))
                    ax.text(x0 + rw / 2 - 0.5, y0 + rh / 2 - 0.5, f"{a:.2f}", ha="center", va="center",
                            fontsize=6, color="white")
            ax.set_title(f"{layer}  regions {size[0]}x{size[1]}", fontsize=8)
    fig.suptitle(f"{title}; map {h}x{w} cells", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="alpha")
    with atomic.atomic_write(path) as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def write_outputs(workdir: str, init: HeadInit, summary: dict) -> dict[str, str]:
    """Write head_init.npz, head_params.msgpack, region_weights.png and init_head.json into workdir."""
    from flax import serialization

    os.makedirs(workdir, exist_ok=True)
    paths = {name: os.path.join(workdir, name) for name in
             ("head_init.npz", "head_params.msgpack", "region_weights.png", "init_head.json")}
    save_head_init(paths["head_init.npz"], init)
    with atomic.atomic_write(paths["head_params.msgpack"]) as f:
        f.write(serialization.msgpack_serialize(head_param_tree(init)))
    save_region_weight_png(paths["region_weights.png"], init)
    atomic.write_json(paths["init_head.json"], summary, indent=2)
    return paths
