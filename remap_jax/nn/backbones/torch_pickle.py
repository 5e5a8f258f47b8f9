"""Reads PyTorch checkpoint files (what `torch.save` writes) with numpy only: no torch, no code execution.

    obj = load("resnet50.pth")     # the saved object; every tensor is a numpy array (C-contiguous copy)

Both on-disk formats are read:

- zip (torch >= 1.6, the default since): `<root>/data.pkl` is the pickle, `<root>/data/<key>` holds each
  storage's raw bytes, `<root>/byteorder` says "little" or "big" (little when absent, as torch assumes).
- legacy (`_use_new_zipfile_serialization=False`, and every file written by torch < 1.6), one stream:
  the pickled magic number, protocol version (1001) and sys-info dict, the pickle of the object, the
  pickled list of storage keys, then per key an int64 element count and the storage's raw bytes (little
  endian).

In both, tensors are pickled as calls of `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
whose `storage` is a persistent id `("storage", torch.FloatStorage, key, location, numel, ...)`. A tensor here
is rebuilt as `storage[offset + sum(i_k * stride_k)]` in numpy, so views (transposes, slices with an offset)
and storages shared by several tensors come back as they were saved; the location (cpu / cuda) is ignored.

A `.pth` file is a pickle, and unpickling can call any importable function. The unpickler here resolves
only the globals a state dict or a training checkpoint of plain Python values needs (`ALLOWED_GLOBALS`:
OrderedDict, the tensor/parameter rebuild functions, the storage classes and dtypes, and `_codecs.encode`
restricted to latin-1, which is how protocol 2 pickles `bytes`) to local numpy implementations; torch
itself is never imported. Any other global is refused with `UnsafePickleError` naming it, before anything
is called.

One file for one job (a safe unpickler for .pth files): both formats go through the same restricted
unpickler and tensor rebuilding, so splitting it would only scatter one reader.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import sys
import tarfile
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


class TorchPickleError(ValueError):
    """A file that is not a readable PyTorch checkpoint (corrupt, truncated, unsupported layout)."""


class UnsafePickleError(TorchPickleError):
    """The pickle asks for a global outside `ALLOWED_GLOBALS` (possibly code execution); nothing was run."""


# torch's legacy typed storage classes -> element dtype. `torch.UntypedStorage` holds bytes; tensors on it
# (`_rebuild_tensor_v3`, used by torch >= 2.1 for dtypes without a legacy class) carry their own dtype.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "UntypedStorage": np.dtype(np.uint8),
}
# `torch.<name>` dtype objects, as pickled for `_rebuild_tensor_v3`.
TORCH_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint64": np.dtype(np.uint64),
    "uint32": np.dtype(np.uint32),
    "uint16": np.dtype(np.uint16),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
    "complex128": np.dtype(np.complex128),
    "complex64": np.dtype(np.complex64),
}


class _TorchName:
    """Stands for a named torch object inside the pickle, with the numpy dtype it means."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self):
        return f"torch.{self.name}"


class _StorageType(_TorchName):
    """A torch storage class (`torch.FloatStorage`, ...)."""

    __slots__ = ()


class _DType(_TorchName):
    """A `torch.<dtype>` object."""

    __slots__ = ()


class _StorageRef:
    """A storage named by a persistent id: `key` into the file's storages, `numel` elements of `dtype`.

    `view` is (offset, numel) into the root storage for the pre-1.0 legacy storage views, else None.
    """

    __slots__ = ("key", "dtype", "numel", "view")

    def __init__(self, key: str, dtype: np.dtype, numel: int, view: tuple[int, int] | None = None):
        self.key, self.dtype, self.numel, self.view = key, dtype, numel, view


class _TensorRef:
    """A tensor waiting for its storage's bytes (the legacy format stores them after the pickle)."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype", "negate", "conjugate")

    def __init__(self, storage, offset, size, stride, dtype=None, metadata=None):
        if not isinstance(storage, _StorageRef):
            raise TorchPickleError(f"tensor rebuild: expected a storage, got {type(storage).__name__}")
        self.storage = storage
        self.offset = _int(offset, "storage offset")
        self.size = tuple(_int(s, "size") for s in _sequence(size, "size"))
        self.stride = tuple(_int(s, "stride") for s in _sequence(stride, "stride"))
        if len(self.size) != len(self.stride):
            raise TorchPickleError(f"tensor rebuild: size {self.size} and stride {self.stride} differ")
        self.dtype = storage.dtype if dtype is None else dtype
        metadata = metadata or {}
        if not isinstance(metadata, dict) or set(metadata) - {"neg", "conj"}:
            raise TorchPickleError(f"tensor rebuild: unsupported tensor metadata {metadata!r}")
        self.negate, self.conjugate = bool(metadata.get("neg")), bool(metadata.get("conj"))


def _int(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TorchPickleError(f"tensor rebuild: {what} must be a non-negative int, got {value!r}")
    return value


def _sequence(value, what: str):
    if not isinstance(value, (tuple, list)):
        raise TorchPickleError(f"tensor rebuild: {what} must be a tuple, got {type(value).__name__}")
    return value


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
    if not isinstance(dtype, _DType):
        raise TorchPickleError(f"tensor rebuild: expected a torch dtype, got {dtype!r}")
    return _TensorRef(storage, storage_offset, size, stride, dtype=dtype.dtype, metadata=metadata)


def _latin1_bytes(text, encoding="utf-8"):
    """`_codecs.encode` as protocol-2 pickles use it for `bytes` values: only the latin-1 codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refused _codecs.encode(..., {encoding!r}): only latin-1 is allowed")
    return text.encode("latin-1")


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_bytes,
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", STORAGE_DTYPES["UntypedStorage"]),
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
    **{("torch", name): _DType(name, dtype) for name, dtype in TORCH_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `ALLOWED_GLOBALS`; `storage_ref(saved_id)` turns persistent ids into `_StorageRef`s."""

    def __init__(self, file, storage_ref, source: str):
        super().__init__(file)
        self._storage_ref = storage_ref
        self._source = source

    def find_class(self, module, name):
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"{self._source}: refused to load global {module}.{name}: a PyTorch checkpoint is a pickle "
                "and only tensors, storages and plain containers are allowed here (nothing was executed)"
            )
        return found

    def persistent_load(self, saved_id):
        return self._storage_ref(saved_id)


def _unpickle(file, storage_ref, source: str):
    """One restricted `load()`; a malformed pickle becomes a TorchPickleError (refusals pass unchanged)."""
    try:
        return _RestrictedUnpickler(file, storage_ref, source).load()
    except TorchPickleError:
        raise
    except Exception as e:  # whatever the bytes make the unpickler or a rebuild function fail on
        raise TorchPickleError(f"{source}: not a PyTorch checkpoint ({type(e).__name__}: {e})") from None


def _text(value) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def _storage_type(value, source: str) -> _StorageType:
    if not isinstance(value, _StorageType):
        raise TorchPickleError(f"{source}: persistent id names storage type {value!r}, not a torch storage")
    return value


class _ZipStorages:
    """The storages of a zip-format checkpoint, read on first use (once per key)."""

    def __init__(self, archive: zipfile.ZipFile, root: str, byteorder: str, source: str):
        self.archive, self.root, self.byteorder, self.source = archive, root, byteorder, source
        self.refs: dict[str, _StorageRef] = {}

    def ref(self, saved_id) -> _StorageRef:
        if not isinstance(saved_id, tuple) or len(saved_id) != 5 or _text(saved_id[0]) != "storage":
            raise TorchPickleError(f"{self.source}: unexpected persistent id {saved_id!r}")
        _, storage_type, key, _location, numel = saved_id
        key = _text(key)
        if key not in self.refs:
            self.refs[key] = _StorageRef(key, _storage_type(storage_type, self.source).dtype, int(numel))
        return self.refs[key]

    def buffer(self, ref: _StorageRef) -> bytes:
        name = f"{self.root}/data/{ref.key}"
        try:
            data = self.archive.read(name)
        except KeyError:
            raise TorchPickleError(f"{self.source}: storage record {name!r} is missing") from None
        if len(data) != ref.numel * ref.dtype.itemsize:
            raise TorchPickleError(
                f"{self.source}: storage {ref.key!r} has {len(data)} bytes, expected "
                f"{ref.numel} x {ref.dtype.itemsize}"
            )
        return data


def _read_zip(path: str, source: str):
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchPickleError(
                f"{source}: a zip file but not a PyTorch checkpoint (expected one <root>/data.pkl record, "
                f"found {len(pickles)})"
            )
        root = pickles[0].split("/")[0]
        names = set(archive.namelist())
        byteorder = "little"
        if f"{root}/byteorder" in names:
            byteorder = archive.read(f"{root}/byteorder").decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise TorchPickleError(f"{source}: unknown byteorder record {byteorder!r}")
        storages = _ZipStorages(archive, root, byteorder, source)
        with archive.open(pickles[0]) as f:
            obj = _unpickle(f, storages.ref, source)
        buffers = {key: storages.buffer(ref) for key, ref in storages.refs.items()}
        return _materialise(obj, buffers, byteorder, source)


class _LegacyStorages:
    def __init__(self, source: str):
        self.source = source
        self.roots: dict[str, _StorageRef] = {}

    def ref(self, saved_id) -> _StorageRef:
        if not isinstance(saved_id, tuple) or not saved_id:
            raise TorchPickleError(f"{self.source}: unexpected persistent id {saved_id!r}")
        kind = _text(saved_id[0])
        if kind == "module":
            raise TorchPickleError(
                f"{self.source}: the file pickles a whole nn.Module ({saved_id[1]!r}), not a state dict; "
                "save `model.state_dict()` instead"
            )
        if kind != "storage" or len(saved_id) != 6:
            raise TorchPickleError(f"{self.source}: unexpected persistent id {saved_id!r}")
        _, storage_type, key, _location, numel, view = saved_id
        key = _text(key)
        dtype = _storage_type(storage_type, self.source).dtype
        root = self.roots.setdefault(key, _StorageRef(key, dtype, int(numel)))
        if view is None:
            return root
        _view_key, offset, view_numel = view
        return _StorageRef(key, dtype, int(view_numel), (int(offset), int(view_numel)))


def _read_legacy(path: str, source: str):
    with open(path, "rb") as f:
        header = lambda: _unpickle(f, _no_persistent_ids(source), source)
        magic = header()
        if magic != LEGACY_MAGIC_NUMBER:
            raise TorchPickleError(f"{source}: not a PyTorch checkpoint (bad magic number {magic!r})")
        protocol = header()
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise TorchPickleError(f"{source}: unsupported legacy protocol version {protocol!r}")
        header()  # sys info: the writer's byte order and C type sizes; the storages are little endian
        storages = _LegacyStorages(source)
        obj = _unpickle(f, storages.ref, source)
        keys = [_text(k) for k in header()]
        buffers = {}
        for key in keys:
            if key not in storages.roots:
                raise TorchPickleError(f"{source}: storage {key!r} is listed but never referenced")
            ref = storages.roots[key]
            count = f.read(8)
            if len(count) != 8:
                raise TorchPickleError(f"{source}: truncated before storage {key!r}")
            (numel,) = struct.unpack("<q", count)
            if numel != ref.numel:
                raise TorchPickleError(
                    f"{source}: storage {key!r} holds {numel} elements, the pickle says {ref.numel}"
                )
            data = f.read(numel * ref.dtype.itemsize)
            if len(data) != numel * ref.dtype.itemsize:
                raise TorchPickleError(f"{source}: storage {key!r} is truncated")
            buffers[key] = data
        missing = sorted(set(storages.roots) - set(buffers))
        if missing:
            raise TorchPickleError(f"{source}: no data for storage(s) {missing}")
        return _materialise(obj, buffers, "little", source)


def _no_persistent_ids(source: str):
    def refuse(saved_id):
        raise TorchPickleError(f"{source}: unexpected persistent id {saved_id!r} in a legacy header pickle")

    return refuse


def _storage_array(buffers, cache, storage: _StorageRef, dtype: np.dtype, byteorder: str) -> np.ndarray:
    """The bytes of `storage` (or of its legacy view) as native-order elements of `dtype`, cached."""
    key = (storage.key, storage.view, dtype)
    if key not in cache:
        raw = np.frombuffer(buffers[storage.key], np.uint8)
        if storage.view is not None:
            start, numel = storage.view
            raw = raw[start * storage.dtype.itemsize : (start + numel) * storage.dtype.itemsize]
        raw = raw[: len(raw) // dtype.itemsize * dtype.itemsize]
        unit = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize  # complex: swap each part
        if byteorder != sys.byteorder and unit > 1:
            raw = raw.reshape(-1, unit)[:, ::-1].reshape(-1)
        cache[key] = raw.view(dtype)
    return cache[key]


def _tensor(ref: _TensorRef, buffers, cache, byteorder: str, source: str) -> np.ndarray:
    data = _storage_array(buffers, cache, ref.storage, ref.dtype, byteorder)
    if 0 in ref.size:
        return np.zeros(ref.size, ref.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if last >= len(data):  # never let as_strided read outside the storage
        raise TorchPickleError(
            f"{source}: tensor of size {ref.size}, stride {ref.stride}, offset {ref.offset} reads element "
            f"{last} of storage {ref.storage.key!r}, which has {len(data)}"
        )
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset :], shape=ref.size, strides=[s * data.itemsize for s in ref.stride], writeable=False
    )
    out = np.array(view, order="C")  # own memory: no aliasing between tensors that shared a storage
    if ref.conjugate:
        out = np.conj(out)
    if ref.negate:
        out = -out
    return out


def _materialise(obj, buffers, byteorder: str, source: str, cache=None):
    """Replaces every `_TensorRef` in nested dicts / lists / tuples by its numpy array."""
    cache = {} if cache is None else cache
    again = lambda v: _materialise(v, buffers, byteorder, source, cache)
    if isinstance(obj, _TensorRef):
        return _tensor(obj, buffers, cache, byteorder, source)
    if isinstance(obj, dict):
        return type(obj)((k, again(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [again(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(again(v) for v in obj)
    if isinstance(obj, (_StorageRef, _TorchName)):
        raise TorchPickleError(f"{source}: a bare torch storage or dtype ({obj!r}) is not supported")
    return obj


def load(path: str | os.PathLike) -> Any:
    """The object saved in a PyTorch checkpoint file, tensors as numpy arrays (any dtype torch saves).

    Parameters come back as plain arrays; containers keep their type (dict, OrderedDict, list, tuple).
    Raises FileNotFoundError, UnsafePickleError for a global outside `ALLOWED_GLOBALS`, and
    TorchPickleError for anything else that is not a readable checkpoint.
    """
    path = os.fspath(path)
    source = path
    if not os.path.exists(path):
        raise FileNotFoundError(f"torch checkpoint: no such file {path!r}")
    if zipfile.is_zipfile(path):
        return _read_zip(path, source)
    if tarfile.is_tarfile(path):
        raise TorchPickleError(
            f"{source}: a tar-format checkpoint (torch < 0.4); load it with torch once and re-save it"
        )
    return _read_legacy(path, source)
