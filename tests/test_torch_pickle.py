"""Torch-free reading of PyTorch checkpoints: both formats as torch writes them, views, dtypes, refusals."""

import collections
import os
import pickle
import struct
import sys
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file
from tool_modules import load_tool

from remap_jax.nn import backbones as bb
from remap_jax.nn.backbones import WeightImportError, torch_pickle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
FORMATS = ("zip", "legacy")


tool = load_tool("make_torch_pickle_fixtures.py")


def _numpy_tensor(dtype: str, values) -> np.ndarray:
    return np.asarray(values).astype(getattr(ml_dtypes, dtype, None) or np.dtype(dtype))


def _assert_same(got, expected, where="checkpoint"):
    assert type(got) is type(expected), f"{where}: {type(got).__name__} vs {type(expected).__name__}"
    if isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype and got.shape == expected.shape, where
        assert got.flags.c_contiguous and got.flags.owndata, where
        np.testing.assert_array_equal(got, expected, err_msg=where)
    elif isinstance(expected, dict):
        assert list(got) == list(expected), where
        for k in expected:
            _assert_same(got[k], expected[k], f"{where}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            _assert_same(g, e, f"{where}[{i}]")
    else:
        assert got == expected, where


@pytest.mark.parametrize("fmt", FORMATS)
def test_reads_torch_written_checkpoint(fmt):
    """Every dtype, views sharing one storage, 0-d / empty tensors, a Parameter, nested containers."""
    got = torch_pickle.load(os.path.join(FIXTURES, f"torch_checkpoint_{fmt}.pth"))
    expected = tool.checkpoint(_numpy_tensor, legacy=(fmt == "legacy"))
    _assert_same(got, expected)
    state = got["state_dict"]
    assert isinstance(state, collections.OrderedDict)
    assert state["dtypes.bfloat16"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert state["shared.transposed"].shape == (6, 4) and state["shared.window"][0, 0] == -2 + 8 / 4
    # Views come back as independent arrays: nothing aliases the storage they shared.
    assert not np.shares_memory(state["shared.base"], state["shared.transposed"])


def _strided_shapes():
    """resnet18's torchvision keys and shapes, classifier included (num_batches_tracked is int64)."""
    shapes = dict(bb.torch_state_dict_shapes("resnet18"))
    shapes.update({"fc.weight": (1000, 512), "fc.bias": (1000,)})
    return shapes


@pytest.mark.parametrize("fmt", FORMATS)
def test_resnet18_pth_loads_like_safetensors(fmt, tmp_path):
    """A resnet18-shaped .pth whose tensors are strided views of one storage, read without torch."""
    pth = os.path.join(FIXTURES, f"resnet18_strided_{fmt}.pth")
    expected = tool.resnet18_views(_strided_shapes())
    state = bb.read_state_dict(pth)
    assert set(state) - set(expected) == {k for k in state if k.endswith("num_batches_tracked")}
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)
    save_file(expected, str(tmp_path / "resnet18.safetensors"))
    from_pth = bb.load_pretrained("resnet18", pth)
    from_safetensors = bb.load_pretrained("resnet18", tmp_path / "resnet18.safetensors")
    assert jax.tree.structure(from_pth) == jax.tree.structure(from_safetensors)
    jax.tree.map(np.testing.assert_array_equal, from_pth, from_safetensors)
    kernel = from_pth["params"]["layer3_1"]["conv2"]["conv"]["kernel"]
    np.testing.assert_array_equal(kernel, expected["layer3.1.conv2.weight"].transpose(2, 3, 1, 0))


def test_reads_without_torch_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` would raise ImportError
    state = bb.read_state_dict(os.path.join(FIXTURES, "torch_checkpoint_zip.pth"))
    # The checkpoint dict is unwrapped to its "state_dict" entry; only arrays are kept.
    assert list(state) == list(tool.checkpoint(_numpy_tensor)["state_dict"])


class _Exploit:
    """Unpickling this runs `function(argument)`: the classic malicious-pickle payload.

    Protocol 2 names the globals `posix.system` and `__builtin__.exec` (Python 2 module names).
    """

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return (self.function, (self.argument,))


def _legacy_file(path, payload: bytes):
    magic, version = torch_pickle.LEGACY_MAGIC_NUMBER, torch_pickle.LEGACY_PROTOCOL_VERSION
    header = b"".join(pickle.dumps(x, protocol=2) for x in (magic, version, {"little_endian": True}))
    path.write_bytes(header + payload + pickle.dumps([], protocol=2))
    return path


def _zip_file(path, payload: bytes, root="archive", byteorder="little", storages=None):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{root}/data.pkl", payload)
        z.writestr(f"{root}/byteorder", byteorder)
        for key, data in (storages or {}).items():
            z.writestr(f"{root}/data/{key}", data)
    return path


def _payloads(marker):
    command = f"echo pwned > {marker}"
    return {
        "posix.system": _Exploit(os.system, command),
        "__builtin__.exec": _Exploit(exec, f"open({str(marker)!r}, 'w').write('pwned')"),
        # hidden inside an otherwise ordinary checkpoint dict
        "posix.system nested": collections.OrderedDict(
            epoch=3, state_dict={"w": [1.0, 2.0], "b": _Exploit(os.system, command)}
        ),
    }


@pytest.mark.parametrize("container", ["zip", "legacy", "legacy header"])
@pytest.mark.parametrize("which", ["posix.system", "__builtin__.exec", "posix.system nested"])
def test_malicious_pickles_are_refused_without_running(container, which, tmp_path):
    marker = tmp_path / "pwned.txt"
    payload = pickle.dumps(_payloads(marker)[which], protocol=2)
    pickle.loads(payload)  # control: the stock unpickler does run the payload
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "evil.pth"
    if container == "zip":
        _zip_file(path, payload)
    elif container == "legacy":
        _legacy_file(path, payload)
    else:  # the very first pickle of the file, where torch expects the magic number
        path.write_bytes(payload)
    refused = which.split()[0]
    with pytest.raises(torch_pickle.UnsafePickleError, match=rf"refused to load global {refused}\b"):
        torch_pickle.load(path)
    with pytest.raises(WeightImportError, match=rf"refused to load global {refused}.*nothing was executed"):
        bb.load_pretrained("resnet18", path)
    assert not marker.exists()


def test_refuses_attribute_paths_and_other_codecs(tmp_path):
    # Protocol 4 resolves dotted names: an allowed class's attributes are not allowed.
    evil = b"\x80\x04\x8c\x0bcollections\x94\x8c\x14OrderedDict.fromkeys\x94\x93)R."
    with pytest.raises(torch_pickle.UnsafePickleError, match=r"collections\.OrderedDict\.fromkeys"):
        torch_pickle.load(_zip_file(tmp_path / "a.pth", evil))
    codec = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(torch_pickle.UnsafePickleError, match="only latin-1"):
        torch_pickle.load(_zip_file(tmp_path / "b.pth", codec))


def _tensor_pickle(numel, offset, size, stride, storage_class="FloatStorage") -> bytes:
    """Hand-assembled protocol-2 pickle of {"w": _rebuild_tensor_v2(storage "0", offset, size, stride)}."""
    text = lambda s: b"X" + struct.pack("<I", len(s)) + s.encode()
    integer = lambda i: b"J" + struct.pack("<i", i)
    ints = lambda xs: b"(" + b"".join(integer(x) for x in xs) + b"t"
    storage = b"(" + text("storage") + f"ctorch\n{storage_class}\n".encode() + text("0") + text("cpu")
    storage += integer(numel) + b"tQ"
    hooks = b"ccollections\nOrderedDict\n)R"
    args = b"(" + storage + integer(offset) + ints(size) + ints(stride) + b"\x89" + hooks + b"t"
    return b"\x80\x02}" + text("w") + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"Rs."


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_arbitrary_strides_offsets_and_byteorder(byteorder, tmp_path):
    pool = np.arange(10, dtype=np.float32) * 1.5
    data = pool.astype(">f4" if byteorder == "big" else "<f4").tobytes()
    # A broadcast (stride 0) view with an offset, in an archive whose root is not the file name.
    payload = _tensor_pickle(10, 3, (2, 3), (0, 2))
    got = torch_pickle.load(_zip_file(tmp_path / "w.pt", payload, "mine", byteorder, {"0": data}))["w"]
    np.testing.assert_array_equal(got, [[4.5, 7.5, 10.5], [4.5, 7.5, 10.5]])
    assert got.dtype == np.float32 and got.dtype.isnative


def test_corrupt_files_are_reported(tmp_path):
    pool = np.zeros(10, np.float32).tobytes()
    outside = _zip_file(tmp_path / "o.pth", _tensor_pickle(10, 5, (2, 3), (3, 1)), storages={"0": pool})
    with pytest.raises(torch_pickle.TorchPickleError, match=r"reads element 10 of storage '0', which has 10"):
        torch_pickle.load(outside)
    short = _zip_file(tmp_path / "s.pth", _tensor_pickle(10, 0, (2,), (1,)), storages={"0": pool[:8]})
    with pytest.raises(torch_pickle.TorchPickleError, match="has 8 bytes, expected 10 x 4"):
        torch_pickle.load(short)
    missing = _zip_file(tmp_path / "m.pth", _tensor_pickle(10, 0, (2,), (1,)))
    with pytest.raises(torch_pickle.TorchPickleError, match="storage record 'archive/data/0' is missing"):
        torch_pickle.load(missing)
    # A torch-written legacy file cut inside its last storage.
    with open(os.path.join(FIXTURES, "torch_checkpoint_legacy.pth"), "rb") as f:
        full = f.read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full[:-5])
    with pytest.raises(torch_pickle.TorchPickleError, match="is truncated"):
        torch_pickle.load(cut)
    # Allowed globals used wrongly: a storage class called like a function.
    misuse = _zip_file(tmp_path / "c.pth", b"\x80\x02ctorch\nFloatStorage\n)R.")
    with pytest.raises(torch_pickle.TorchPickleError, match=r"not a PyTorch checkpoint \(TypeError"):
        torch_pickle.load(misuse)
    garbage = tmp_path / "g.pth"
    garbage.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(WeightImportError, match="not a PyTorch checkpoint"):
        bb.load_pretrained("resnet18", garbage)
    with zipfile.ZipFile(tmp_path / "z.pth", "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(torch_pickle.TorchPickleError, match="expected one <root>/data.pkl"):
        torch_pickle.load(tmp_path / "z.pth")
    with pytest.raises(FileNotFoundError, match="no such file"):
        torch_pickle.load(tmp_path / "absent.pth")
