"""Descriptor files: read and merge the ``.npz`` files ``remap-extract`` writes.

A feature file holds ``descriptors`` (N, D) float32 and ``ids`` (N,) (the image names), plus keys this module
ignores (``failed``, ``failed_reasons``, ``meta``). A database described in parts (several extraction runs,
a distractor set next to a benchmark) is merged by :func:`load_features`:

    descriptors, ids = load_features(["oxford.npz", "distractors/part-*.npz"])

Order: the specs in the order given; a glob pattern contributes its matches sorted by path (so
``part-*.npz`` comes back in name order, whatever the file system lists first); within a file, its rows in
order. Row ``i`` of the result is therefore reproducible from the command line alone.

Refused, naming the files: a spec that matches no file, a file named twice, a file that is not a readable
``.npz`` or has no ``descriptors``, dimensions that differ between files, an id that appears twice (in one
file or in two), and, when merging several files, a file without ``ids``.
"""

from __future__ import annotations

import glob
import os
import zipfile
from collections.abc import Sequence

import numpy as np

__all__ = ["FeatureFileError", "feature_files", "load_features"]

Spec = str | os.PathLike


class FeatureFileError(ValueError):
    """A feature file, or a set of them, cannot be read or merged; the message names the file(s)."""


def feature_files(specs: Spec | Sequence[Spec]) -> list[str]:
    """The files ``specs`` name, in merge order: specs as given, each glob pattern's matches sorted.

    Args:
      specs: a path or glob pattern (``*``, ``?``, ``[...]``, ``**`` for any depth), or a sequence of them.
    Returns:
      the paths, as matched (not made absolute).
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    specs = [os.fspath(s) for s in specs]
    if not specs:
        raise FeatureFileError("features: no files given; expected .npz paths or glob patterns")
    files: list[str] = []
    named_by: dict[str, str] = {}
    for spec in specs:
        if glob.has_magic(spec):
            matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not matches:
                raise FeatureFileError(
                    f"{spec}: the pattern matches no file; expected .npz files from remap-extract"
                )
        else:
            if not os.path.isfile(spec):
                raise FeatureFileError(f"{spec}: no such file; expected a .npz written by remap-extract")
            matches = [spec]
        for path in matches:
            key = os.path.realpath(path)
            if key in named_by:
                raise FeatureFileError(
                    f"{path}: named twice (by {named_by[key]!r} and {spec!r}); expected each file once"
                )
            named_by[key] = spec
            files.append(path)
    return files


def _npy_header(archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the array ``name`` stored in an open .npz, read from its header alone."""
    with archive.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return shape, dtype


def _describe(path: str) -> tuple[tuple[int, ...], bool]:
    """(descriptors shape, has ids) of one feature file, without reading its arrays."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy"))
            if "descriptors" not in names:
                raise FeatureFileError(
                    f"{path}: no 'descriptors' array (found {names}); expected a .npz written by "
                    "remap-extract with keys descriptors, ids, failed"
                )
            shape, dtype = _npy_header(archive, "descriptors")
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, FeatureFileError):
            raise
        raise FeatureFileError(f"{path}: not a readable .npz file ({e})") from e
    if len(shape) != 2:
        raise FeatureFileError(f"{path}: 'descriptors' expected rank 2 (N, D), got shape {shape}")
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise FeatureFileError(f"{path}: 'descriptors' expected a float array, got dtype {dtype}")
    return shape, "ids" in names


def _check_ids(path: str, ids: np.ndarray, n: int) -> np.ndarray:
    if ids.shape != (n,):
        raise FeatureFileError(f"{path}: 'ids' has shape {ids.shape}, expected ({n},) like descriptors")
    if ids.dtype.kind not in "iuU":
        raise FeatureFileError(f"{path}: 'ids' expected strings or integers, got dtype {ids.dtype}")
    return ids


def _check_unique(ids: np.ndarray, files: list[str], offsets: np.ndarray) -> None:
    """Raises naming the first duplicated id (in sorted order) and the file(s) and rows holding it."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    same = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if same.size == 0:
        return
    first, second = np.sort(order[same[0] : same[0] + 2])
    where = []
    for row in (first, second):
        f = int(np.searchsorted(offsets, row, side="right")) - 1
        where.append((files[f], int(row - offsets[f])))
    (file_a, row_a), (file_b, row_b) = where
    place = (
        f"twice in {file_a} (rows {row_a} and {row_b})"
        if file_a == file_b
        else (f"in {file_a} (row {row_a}) and in {file_b} (row {row_b})")
    )
    raise FeatureFileError(
        f"ids: {sorted_ids[same[0]].item()!r} appears {place}; expected every image once "
        f"({len(np.unique(sorted_ids[same]))} duplicated ids in all)"
    )


def load_features(specs: Spec | Sequence[Spec]) -> tuple[np.ndarray, np.ndarray]:
    """Reads one or several ``remap-extract`` feature files and merges them in :func:`feature_files` order.

    Args:
      specs: a path or glob pattern, or a sequence of them (see :func:`feature_files` for the order).
    Returns:
      descriptors (N, D) float32 (C-contiguous; N the total rows) and ids (N,): the files' ``ids`` (strings
      as written by remap-extract), or int64 row numbers 0..N-1 for a single file without ``ids``.
    Raises:
      FeatureFileError (a ValueError) naming the file(s): see the module docstring. The output is filled
      file by file, so peak memory is the result plus the largest file.
    """
    files = feature_files(specs)
    shapes, has_ids = zip(*(_describe(p) for p in files), strict=True)
    dims = sorted({s[1] for s in shapes})
    if len(dims) > 1:
        by_dim = {d: [p for p, s in zip(files, shapes, strict=True) if s[1] == d] for d in dims}
        listing = "; ".join(f"D={d}: {', '.join(ps)}" for d, ps in by_dim.items())
        raise FeatureFileError(
            f"features: descriptor dimensions differ between files ({listing}); expected one D"
        )
    if len(files) > 1 and not all(has_ids):
        missing = [p for p, h in zip(files, has_ids, strict=True) if not h]
        raise FeatureFileError(
            f"{missing[0]}: no 'ids' array; several files are merged by image id, so each needs its 'ids' "
            f"({len(missing)} of {len(files)} files lack them)"
        )
    counts = np.array([s[0] for s in shapes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    descriptors = np.empty((int(offsets[-1]), dims[0]), dtype=np.float32)
    ids = []
    for path, start, count in zip(files, offsets[:-1], counts, strict=True):
        try:
            with np.load(path, allow_pickle=False) as f:
                descriptors[start : start + count] = f["descriptors"]
                file_ids = f["ids"] if has_ids[0] else None
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise FeatureFileError(f"{path}: not a readable .npz file ({e})") from e
        if file_ids is not None:
            ids.append(_check_ids(path, file_ids, int(count)))
    if not has_ids[0]:
        return descriptors, np.arange(len(descriptors), dtype=np.int64)
    kinds = {i.dtype.kind for i in ids}
    if len(kinds) > 1 and not kinds <= {"i", "u"}:
        raise FeatureFileError(
            "ids: files mix string and integer ids ("
            + ", ".join(f"{p}: {i.dtype}" for p, i in zip(files, ids, strict=True))
            + "); expected one kind"
        )
    ids = np.concatenate(ids)
    _check_unique(ids, files, offsets)
    return descriptors, ids
