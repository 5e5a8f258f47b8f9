"""Atomic file and folder writes, and the project's one JSON writer and reader.

Everything is written next to its destination under a temporary name and renamed into place at the end
(`os.replace` is atomic within a file system); on any error the temporary is removed and the destination
is left as it was. Files and folders get the permissions `open()` / `os.makedirs()` would give them under
the user's umask (the temporaries `tempfile` creates are private, 0600 / 0700, until they are renamed).

An `OSError` from a write names the destination (not the temporary), so a command can report it in one
line (`remap_jax.runtime.command_errors`).

JSON goes through `write_json` / `to_json`: numpy scalars and arrays become numbers and lists, and NaN or
infinite floats become `null`, so every file is valid JSON; `read_json` reads one back and names the file
when it is not JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping

import numpy as np

__all__ = ["atomic_write", "jsonable", "make_temp_dir", "read_json", "replace_dir", "save_npz", "to_json",
           "destination_of", "write_json", "writing_dir"]


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows, else by setting and restoring it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_as_created(path: str, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def _name_destination(error: OSError, path: str, tmp: str | None = None) -> None:
    """Points `error.filename` at `path` where it names nothing, the temporary `tmp` (or a path in it), or a
    temporary name `tempfile` tried for `path`."""
    name = error.filename
    if name is None:
        error.filename = path
        return
    if not isinstance(name, str):
        return
    full = os.path.abspath(path)
    if tmp is not None and (name == tmp or name.startswith(tmp + os.sep)):
        error.filename = path + name[len(tmp):]
    elif (os.path.dirname(name) == os.path.dirname(full)
          and os.path.basename(name).startswith(f".{os.path.basename(full)}.")):
        error.filename = path
    else:
        return
    error.filename2 = None  # e.g. the rename of the temporary: the destination alone says it


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb"):
    """Context manager yielding a file opened in `mode` ("wb" or "w") that becomes `path` on success."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, mode) as f:
            yield f
        _chmod_as_created(tmp, directory=False)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        if isinstance(e, OSError):
            _name_destination(e, path, tmp)
        raise


def save_npz(path: str, **arrays) -> None:
    """`np.savez(path, **arrays)`, atomically. `path` is used as given (no ".npz" is appended)."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def jsonable(value):
    """`value` with numpy scalars/arrays turned into Python numbers/lists and NaN/inf floats into None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"not JSON-serialisable: {value!r} of type {type(value).__name__}")


def to_json(obj, indent: int | None = 1, sort_keys: bool = False) -> str:
    """Valid JSON text of `obj` (see `jsonable`); never writes NaN or Infinity."""
    return json.dumps(jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(path: str, obj, indent: int | None = 1) -> None:
    """Writes `obj` as valid JSON to `path`, atomically, with a trailing newline."""
    text = to_json(obj, indent=indent)
    with atomic_write(path, "w") as f:
        f.write(text + "\n")


def read_json(path: str, error: type[Exception] = ValueError, label: str | None = None):
    """The JSON value in `path`; a file that is not UTF-8 JSON raises `error` naming it.

    `label` (default: the path) starts the message, e.g. ``"artifact metadata '/x/descriptor.json'"``. A
    missing or unreadable file raises the `OSError` as it is: callers check for existence where they can
    say what was expected there.
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{label or path}: not valid JSON ({e})") from None


_TEMP_DIR = re.compile(r"(^|/)\.([^/]+)\.tmp-[A-Za-z0-9_]{8}(?=/|$)")


def destination_of(path: str) -> str:
    """`path` with any folder `make_temp_dir` made (`.NAME.tmp-XXXXXXXX`) read as the NAME it becomes."""
    return _TEMP_DIR.sub(r"\1\2", path) if isinstance(path, str) else path


def make_temp_dir(destination: str) -> str:
    """A new empty hidden folder next to `destination` (same file system), to be filled and then moved into
    place with `replace_dir`. Its permissions are those `os.makedirs` gives under the umask."""
    parent = os.path.dirname(os.path.abspath(destination))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(destination))}.tmp-", dir=parent)
    except OSError as e:
        _name_destination(e, os.fspath(destination))
        raise
    _chmod_as_created(tmp, directory=True)
    return tmp


@contextlib.contextmanager
def writing_dir(directory: str, merge: bool = False):
    """Context manager yielding a new temporary folder next to `directory`; what is written into it becomes
    `directory` on success (`replace_dir`), or with `merge=True` replaces the same-named entries of an
    existing `directory` and keeps its others. On any error the temporary folder is removed and `directory`
    is as it was; an `OSError` about a path inside the temporary names the path in `directory` instead."""
    directory = os.path.abspath(os.fspath(directory))
    tmp = None
    try:
        tmp = make_temp_dir(directory)
        yield tmp
        if merge and os.path.isdir(directory):
            for name in sorted(os.listdir(tmp)):
                source, target = os.path.join(tmp, name), os.path.join(directory, name)
                if os.path.isdir(source) and not os.path.islink(source):
                    replace_dir(source, target)
                else:
                    os.replace(source, target)
            os.rmdir(tmp)
        else:
            replace_dir(tmp, directory)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            _name_destination(e, directory, tmp)
        raise


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
