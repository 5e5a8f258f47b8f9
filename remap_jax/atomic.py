"""Atomic file and folder writes: a reader (or a resumed run) never sees a half-written result.

Everything is written next to its destination under a temporary name and renamed into place at the end
(`os.replace` is atomic within a file system); on any error the temporary is removed and the destination
is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import numpy as np

__all__ = ["atomic_write", "replace_dir", "save_npz"]


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb"):
    """Context manager yielding a file opened in `mode` ("wb" or "w") that becomes `path` on success."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def save_npz(path: str, **arrays) -> None:
    """`np.savez(path, **arrays)`, atomically. `path` is used as given (no ".npz" is appended)."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def replace_dir(tmp: str, directory: str) -> None:
    """Renames the finished folder `tmp` to `directory`.

    An existing non-empty `directory` is moved aside first and removed only after the rename succeeded;
    if the rename fails it is put back.
    """
    if not os.path.exists(directory):
        os.replace(tmp, directory)
        return
    if os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)
        os.replace(tmp, directory)
        return
    old = tempfile.mkdtemp(
        prefix=f".{os.path.basename(directory)}.old-", dir=os.path.dirname(directory) or "."
    )
    os.rmdir(old)
    os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    except BaseException:
        os.replace(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)
