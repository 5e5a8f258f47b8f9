"""Writes the small torch-written checkpoints that tests/test_torch_pickle.py reads without torch.

Four files in tests/fixtures/, each written by `torch.save` in both on-disk formats:

- `torch_checkpoint_{zip,legacy}.pth` (a few KB): a training-style checkpoint dict holding an OrderedDict
  state dict with one tensor per dtype (float32/64/16, bfloat16, float8_e4m3fn, int64/32/16/8, uint8,
  uint16, bool; the legacy file without float8/uint16, see V3_DTYPES), tensors that share one storage (the
  base, its transpose, an offset window, a strided slice in another container), a 0-d and an empty tensor,
  an nn.Parameter, and plain Python values (int, float, str, bytes, bool, None).
- `resnet18_strided_{zip,legacy}.pth` (~50 KB): every key and shape of torchvision's resnet18 state dict,
  each tensor an `as_strided` view of one shared 8192-float storage with its own offset and strides, so the
  file is small while the reader's offset/stride logic is exercised on real key names and shapes.

The contents are pure-numpy functions of this file (`checkpoint`, `resnet18_views`), which the tests import
to rebuild the expected arrays. Run in the torch virtualenv (torch is never a library dependency):

    /tmp/torchenv/bin/python tools/make_torch_pickle_fixtures.py
"""

from __future__ import annotations

import argparse
import collections
import os
import zlib

import numpy as np

SEED = 20240611
POOL_SIZE = 8192  # float32 elements in the one storage behind every resnet18 tensor
FORMATS = ("zip", "legacy")
# Values chosen to be exact in their dtype, so torch and numpy agree bit for bit.
_FLOAT8_VALUES = np.array([-3.0, -1.5, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.75, 3.0])


# Dtypes torch >= 2.1 saves as an UntypedStorage plus a dtype (`_rebuild_tensor_v3`). torch's own legacy
# loader cannot read those back (torch 2.14: AttributeError on UntypedStorage.dtype), so the legacy
# checkpoint leaves them out.
V3_DTYPES = ("float8_e4m3fn", "uint16")


def tensor_specs(seed: int = SEED, legacy: bool = False) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (torch dtype name, values): values are numpy arrays whose numbers are exact in that dtype.

    bfloat16 and float8 values are given as float32 (numpy has no such dtypes; ml_dtypes does).
    `legacy=True` leaves out `V3_DTYPES`.
    """
    rng = np.random.default_rng([seed, 0])
    eighths = lambda shape: (rng.integers(-64, 64, shape) / 8).astype(np.float32)
    specs = {
        "float32": ("float32", rng.standard_normal((2, 3)).astype(np.float32)),
        "float64": ("float64", rng.standard_normal((3, 2))),
        "float16": ("float16", rng.standard_normal((4,)).astype(np.float16)),
        "bfloat16": ("bfloat16", eighths((2, 2, 3))),
        "float8_e4m3fn": ("float8_e4m3fn", rng.choice(_FLOAT8_VALUES, (5,)).astype(np.float32)),
        "int64": ("int64", rng.integers(-(2**40), 2**40, (3,), dtype=np.int64)),
        "int32": ("int32", rng.integers(-(2**30), 2**30, (2, 2), dtype=np.int32)),
        "int16": ("int16", rng.integers(-(2**14), 2**14, (3,), dtype=np.int16)),
        "int8": ("int8", rng.integers(-128, 128, (4,), dtype=np.int8)),
        "uint8": ("uint8", rng.integers(0, 256, (2, 3), dtype=np.uint8)),
        "uint16": ("uint16", rng.integers(0, 2**16, (3,), dtype=np.uint16)),
        "bool": ("bool", rng.integers(0, 2, (5,)).astype(bool)),
    }
    return {n: s for n, s in specs.items() if not (legacy and s[0] in V3_DTYPES)}


def checkpoint(make, parameter=lambda x: x, legacy: bool = False) -> dict:
    """The fixture checkpoint; `make(dtype_name, values)` builds a tensor (torch in the tool, numpy in tests).

    `parameter` wraps one tensor as an nn.Parameter in the tool (identity in tests); `legacy` as in
    `tensor_specs`.
    """
    base = make("float32", (np.arange(24, dtype=np.float32).reshape(4, 6) / 4 - 2))
    specs = tensor_specs(legacy=legacy)
    state = collections.OrderedDict((f"dtypes.{n}", make(d, v)) for n, (d, v) in specs.items())
    state["shared.base"] = base
    state["shared.transposed"] = base.T  # strides (1, 6)
    state["shared.window"] = base[1:3, 2:5]  # storage offset 8
    state["scalar"] = make("float32", np.array(3.5, np.float32))
    state["empty"] = make("float32", np.zeros((0, 3), np.float32))
    return {
        "epoch": 7,
        "arch": "tiny",
        "best_map": 0.625,
        "flags": [True, None, b"raw"],
        "state_dict": state,
        "extras": [base[2:, ::2], (parameter(make("float32", np.ones((2, 2), np.float32))), "label")],
    }


def strided_layout(key: str, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(storage offset, strides in elements) of `key`'s view into the shared pool; strides 1, 3, 5, 7 from
    the last dimension, the offset a key hash that keeps the whole view inside the pool."""
    strides = tuple((1, 3, 5, 7)[: len(shape)])[::-1]
    extent = sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 1
    if extent > POOL_SIZE:
        raise ValueError(f"{key}: shape {shape} does not fit the {POOL_SIZE}-element pool")
    return zlib.crc32(key.encode()) % (POOL_SIZE - extent + 1), strides


def resnet18_pool(seed: int = SEED) -> np.ndarray:
    return np.random.default_rng([seed, 1]).standard_normal(POOL_SIZE).astype(np.float32)


def resnet18_views(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, np.ndarray]:
    """The numpy arrays the strided resnet18 fixture holds for the float keys in `shapes`."""
    pool = resnet18_pool(seed)
    out = {}
    for key, shape in shapes.items():
        offset, strides = strided_layout(key, tuple(shape))
        view = np.lib.stride_tricks.as_strided(pool[offset:], shape, [s * pool.itemsize for s in strides])
        out[key] = np.array(view)
    return out


def _save(torch, obj, path: str, fmt: str) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    stack = [(obj, torch.load(path, weights_only=True))]  # torch itself reads the file back identically
    while stack:
        a, b = stack.pop()
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b) and a.dtype == b.dtype, path
            continue
        assert type(a) is type(b), (path, type(a), type(b))
        if isinstance(a, dict):
            stack += [(v, b[k]) for k, v in a.items()]
        elif isinstance(a, (list, tuple)):
            stack += list(zip(a, b, strict=True))
        else:
            assert a == b, (path, a, b)
    print(f"wrote {path} ({os.path.getsize(path) / 1e3:.1f} KB)")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out-dir", default=os.path.join(here, "..", "tests", "fixtures"))
    args = parser.parse_args(argv)

    import torch
    import torchvision

    make = lambda dtype, values: torch.tensor(values).to(getattr(torch, dtype))
    state = torchvision.models.resnet18(weights=None).state_dict()
    pool = torch.from_numpy(resnet18_pool())
    strided = collections.OrderedDict()
    for key, value in state.items():
        if value.dtype != torch.float32:  # num_batches_tracked: kept as saved (the loader ignores it)
            strided[key] = torch.tensor(3, dtype=torch.int64)
            continue
        offset, strides = strided_layout(key, tuple(value.shape))
        strided[key] = torch.as_strided(pool, tuple(value.shape), strides, offset)
    os.makedirs(args.out_dir, exist_ok=True)
    for fmt in FORMATS:
        ckpt = checkpoint(make, parameter=torch.nn.Parameter, legacy=(fmt == "legacy"))
        _save(torch, ckpt, os.path.join(args.out_dir, f"torch_checkpoint_{fmt}.pth"), fmt)
        _save(torch, strided, os.path.join(args.out_dir, f"resnet18_strided_{fmt}.pth"), fmt)


if __name__ == "__main__":
    main()
