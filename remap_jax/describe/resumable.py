"""Resumable extraction: describe a list of images while keeping the finished rows in a partial feature
file, so an interrupted run (`remap-extract`, benchmark evaluation) resumes where it stopped.

A feature file (`feature_arrays`) holds `descriptors` (N, D) float32, `ids` (N,), `failed` (M,) and
`failed_reasons` (M,) strings and `meta` (JSON text of the settings). A partial file is one, written
atomically, whose `meta` must equal the resuming run's (`ResumeMismatchError` otherwise). In a multi-process
job each process keeps its own partial file (`partial_file_of_process`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from remap_jax.describe.pipeline import Failed
from remap_jax.runtime import atomic

if TYPE_CHECKING:
    from remap_jax.describe.extractor import Extractor, Progress

__all__ = ["ResumeMismatchError", "describe_resumable", "feature_arrays", "partial_file_of_process"]


class ResumeMismatchError(ValueError):
    """A partial file was written with other settings than the run that would resume from it."""


def feature_arrays(descriptors: np.ndarray, ids: Sequence[str], failed: Sequence[tuple[str, str]],
                   meta: Mapping) -> dict[str, np.ndarray]:
    """The arrays of a feature file (what `remap-extract` writes and `remap-index` reads): `descriptors`
    (N, D) float32, `ids` (N,), `failed` (M,) and `failed_reasons` (M,) strings, `meta` (JSON text)."""
    return dict(
        descriptors=np.asarray(descriptors, np.float32),
        ids=np.array(list(ids), dtype=str).reshape(-1),
        failed=np.array([f[0] for f in failed], dtype=str).reshape(-1),
        failed_reasons=np.array([f[1] for f in failed], dtype=str).reshape(-1),
        meta=np.array(atomic.to_json(meta, indent=None, sort_keys=True)),
    )


def describe_resumable(
    extractor: Extractor,
    sources: Sequence[Any],
    ids: Sequence[str],
    *,
    bboxes: Sequence[Any] | None = None,
    partial: str | None = None,
    meta: Mapping | None = None,
    save_every: int = 50,
    progress: Progress = False,
    on_mismatch: str = "raise",
    on_failed: Callable[[str, str], None] | None = None,
) -> tuple[np.ndarray, list[str], list[tuple[str, str]], int]:
    """Describes `sources` (ids: one unique string per source), keeping progress in the feature file
    `partial` so that an interrupted run resumes where it stopped.

    Finished rows are written to `partial` (atomically) every `save_every` batches and when the run is
    interrupted; a later call with the same `meta` describes only what is missing. A `partial` written with
    another `meta` raises ResumeMismatchError (`on_mismatch="raise"`) or is ignored (`"restart"`).
    `on_failed(id, reason)` is called for each input that cannot be read.

    In a multi-process job (the extractor's `process_share`) every process describes its share, keeps its own
    partial file (`partial_file_of_process`) and the results are gathered: every process returns all of them.

    Returns:
      (descriptors (N_ok, D) float32 in input order, their ids, failed [(id, reason)], images described now
      by this process). The partial file is left in place: the caller removes it once the result is saved.
    """
    ids = [str(i) for i in ids]
    if len(ids) != len(sources):
        raise ValueError(f"ids: expected one per source ({len(sources)}), got {len(ids)}")
    mine = set(extractor._share(len(sources)))
    if partial and extractor.process_share:
        partial = partial_file_of_process(partial)
    meta = json.loads(atomic.to_json(meta or {}, indent=None, sort_keys=True))
    done_ids: list[str] = []
    done_desc: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    if partial and os.path.exists(partial):
        with np.load(partial) as f:
            old_meta = json.loads(str(f["meta"]))
            if old_meta == meta:
                done_ids = [str(i) for i in f["ids"]]
                done_desc = [f["descriptors"]]
                failed = list(zip((str(i) for i in f["failed"]), (str(r) for r in f["failed_reasons"]),
                                  strict=True))
            elif on_mismatch == "raise":
                raise ResumeMismatchError(f"{partial} was written with other settings ({old_meta})")
    finished = set(done_ids) | {i for i, _ in failed}
    todo = [k for k, i in enumerate(ids) if i not in finished and k in mine]
    since_save = 0
    described_now = 0

    def save_partial():
        desc = np.concatenate(done_desc) if done_desc else np.zeros((0, extractor.dim), np.float32)
        atomic.save_npz(partial, **feature_arrays(desc, done_ids, failed, meta))

    try:
        for item in extractor.describe_iter(sources, bboxes, indices=todo, progress=progress, share=False):
            if isinstance(item, Failed):
                failed.append((ids[item.index], item.reason))
                if on_failed is not None:
                    on_failed(ids[item.index], item.reason)
                continue
            done_ids.extend(ids[k] for k in item.indices)
            done_desc.append(item.descriptors)
            described_now += len(item.indices)
            since_save += 1
            if partial and since_save >= save_every:
                save_partial()
                since_save = 0
    except BaseException:
        if partial and (done_ids or failed):
            save_partial()
        raise
    desc = np.concatenate(done_desc) if done_desc else np.zeros((0, extractor.dim), np.float32)
    if extractor.process_share:
        from remap_jax.runtime import distributed

        parts = distributed.allgather_json({"ids": done_ids, "failed": failed})
        desc = distributed.allgather_rows(desc, [len(part["ids"]) for part in parts])
        done_ids = [i for part in parts for i in part["ids"]]
        failed = [(i, r) for part in parts for i, r in part["failed"]]
    order = {i: k for k, i in enumerate(ids)}
    perm = np.argsort([order[i] for i in done_ids], kind="stable")
    return desc[perm], [done_ids[k] for k in perm], failed, described_now


def partial_file_of_process(path: str) -> str:
    """`db.partial.npz` -> `db.partial-p1of2.npz`: where process 1 of 2 keeps its share's progress."""
    stem = path[:-4] if path.endswith(".npz") else path
    return f"{stem}-p{jax.process_index()}of{jax.process_count()}.npz"
