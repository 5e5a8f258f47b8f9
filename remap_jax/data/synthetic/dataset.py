"""Generating the ``synthetic_landmarks`` dataset in memory: :func:`generate` (every split),
:func:`generate_training` (``train``, ``val``) and :func:`generate_test` (``index``, ``query`` and the
revisited ground truth). Every view has its own seed, so any part equals the same part of the whole.
"""

from __future__ import annotations

import numpy as np

from remap_jax.data.labels import positive_pairs
from remap_jax.data.synthetic.config import EASY, HARD, JUNK, NAMED_CONFIGS, SyntheticConfig
from remap_jax.data.synthetic.photos import collage_landmark_ids, split_landmark_ids
from remap_jax.data.synthetic.render import View, render_distractor, render_view


def _target_kinds(rng, n: int, junk: bool) -> list[str]:
    weights = np.array([0.45, 0.35, 0.2]) if junk else np.array([0.55, 0.45, 0.0])
    counts = np.floor(weights * n).astype(int)
    counts[0] += n - counts.sum()
    kinds = [EASY] * counts[0] + [HARD] * counts[1] + [JUNK] * counts[2]
    return [kinds[i] for i in rng.permutation(n)]


def _views_for(config, split_code: int, landmarks, per_landmark: int, junk: bool) -> list[View]:
    views = []
    for lm in landmarks:
        kinds = _target_kinds(np.random.default_rng([config.seed, split_code, lm]), per_landmark, junk)
        for i, kind in enumerate(kinds):
            rng = np.random.default_rng([config.seed, split_code, lm, i + 1])
            views.append(render_view(rng, lm, kind, config))
    return views


def generate_training(config: SyntheticConfig = NAMED_CONFIGS["default"]) -> dict:
    """The ``train`` and ``val`` splits: ``{"train": TrainSplit, "val": TrainSplit}``, a TrainSplit being
    ``{"views": [View], "qidx": (P,), "pidx": (P,)}`` (see :func:`remap_jax.data.labels.positive_pairs`)."""
    lms = split_landmark_ids(config)
    out = {}
    for code, split in ((1, "train"), (2, "val")):
        per = config.train_views_per_landmark if split == "train" else config.val_views_per_landmark
        views = _views_for(config, code, lms[split], per, junk=False) if lms[split] and per else []
        if split == "train" and config.num_collage_landmarks:
            views += _views_for(
                config, code, collage_landmark_ids(config), config.collage_views_per_landmark, junk=False
            )
        labels = np.array([v.landmark for v in views], np.int64)
        usable = np.array([v.difficulty != JUNK for v in views], bool)
        qidx, pidx = positive_pairs(labels, usable, seed=config.seed * 1000 + code)
        out[split] = {"views": views, "qidx": qidx, "pidx": pidx}
    return out


def generate_test(config: SyntheticConfig = NAMED_CONFIGS["default"], progress: bool = False) -> dict:
    """The test part: ``{"index": [View], "query": [View], "gnd": [dict], "landmarks": split_landmark_ids}``;
    ``gnd[q]`` has ``easy``, ``hard``, ``junk`` (index positions) and ``bbx`` (x0, y0, x1, y1) for query q.
    Every view has its own seed, so this equals the test part of :func:`generate`."""
    lms = split_landmark_ids(config)
    index = _views_for(config, 3, lms["test"], config.index_views_per_landmark, junk=True)
    it = range(config.num_distractors)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="distractors")
    for i in it:
        index.append(render_distractor(np.random.default_rng([config.seed, 4, i]), config))
    order = np.random.default_rng([config.seed, 5]).permutation(len(index))
    index = [index[i] for i in order]

    queries, gnd = [], []
    index_labels = np.array([v.landmark for v in index])
    index_difficulty = np.array([v.difficulty for v in index])
    for lm in lms["test"]:
        for i in range(config.queries_per_landmark):
            view = render_view(np.random.default_rng([config.seed, 6, lm, i]), lm, "query", config)
            queries.append(view)
            same = index_labels == lm
            gnd.append(
                {
                    "easy": np.flatnonzero(same & (index_difficulty == EASY)),
                    "hard": np.flatnonzero(same & (index_difficulty == HARD)),
                    "junk": np.flatnonzero(same & (index_difficulty == JUNK)),
                    "bbx": np.asarray(view.bbox, np.float64),
                }
            )
    return {"index": index, "query": queries, "gnd": gnd, "landmarks": lms}


def generate(config: SyntheticConfig = NAMED_CONFIGS["default"], progress: bool = False) -> dict:
    """Generates the whole dataset in memory: :func:`generate_training` and :func:`generate_test` together.

    Returns:
      ``{"train": TrainSplit, "val": TrainSplit, "index": [View], "query": [View], "gnd": [dict],
      "landmarks": {split: landmark ids}}`` where a TrainSplit is ``{"views": [View], "qidx": (P,),
      "pidx": (P,)}``; ``gnd[q]`` has ``easy``, ``hard``, ``junk`` (index positions) and ``bbx``
      (x0, y0, x1, y1) for query q.
    """
    return {**generate_training(config), **generate_test(config, progress=progress)}

