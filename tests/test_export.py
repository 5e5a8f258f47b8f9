"""Serving artifacts (`remap_jax.describe.export`, `remap-export`): the jax.export artifact, the TF
SavedModel and the
ONNX file each equal the Extractor's descriptors (max abs <= 1e-5) in a fresh process that never imports
remap_jax; `Extractor.from_exported` / `remap-extract --exported` run the input pipeline on an artifact;
bad inputs, truncated or foreign artifacts and a platform not exported for each give one line.

A tiny EfficientNet-Lite0 (random weights, taps up to blocks.4, 48x64 inputs) keeps this cheap. The ONNX
parts need jax2onnx, which the README's test command installs with `--no-deps` (its declared orbax pin
conflicts with ours: see the README's "Export and serving"). Under CI=true a missing jax2onnx fails them;
elsewhere they are reported as skipped, with the reason.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest
from PIL import Image

from remap_jax.cli import export as export_cli
from remap_jax.cli import extract as extract_cli
from remap_jax.describe import export
from remap_jax.describe.extractor import Extractor
from remap_jax.model import describe_multiscale, init_variables, model_from_config, save_exported

SIZE = (48, 64)
CONFIG = {"arch": "efficientnet_lite0", "taps": ["blocks.2", "blocks.4"], "head": "remap", "levels": 2,
          "whiten": False, "image_size": list(SIZE)}
ONNX = export.onnx_available()
if not ONNX and os.environ.get("CI", "").lower() == "true":
    raise RuntimeError("jax2onnx is not installed, and CI must run the ONNX tests: the README's test command "
                       "installs it with `pip install --no-deps jax2onnx==0.17.1`")
needs_onnx = pytest.mark.skipif(not ONNX, reason="jax2onnx is not installed (an optional extra; see README)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint dir, artifact dir, images (3, H, W, 3) uint8, the Extractor's descriptors of them)."""
    root = tmp_path_factory.mktemp("export")
    model = model_from_config(CONFIG)
    variables = init_variables(model, jax.random.key(0), (1, *SIZE, 3))
    checkpoint = str(root / "checkpoint")
    save_exported(checkpoint, CONFIG, variables)
    out = str(root / "serving")
    formats = ["jax", "saved_model"] + (["onnx"] if ONNX else [])
    assert export_cli.main(["--checkpoint", checkpoint, "--out", out, "--formats", *formats]) == 0
    images = np.random.default_rng(0).integers(0, 256, (3, *SIZE, 3), np.uint8)
    reference = np.asarray(Extractor.from_checkpoint(checkpoint, batch_size=3).describe_batch(images))
    return checkpoint, out, images, reference


FRESH_PROCESS = textwrap.dedent("""
    import os, sys
    import numpy as np
    import jax
    out, images_path, result_path = sys.argv[1:4]
    images = np.load(images_path)
    with open(os.path.join(out, "descriptor.jax"), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    results = {"jax": np.asarray(exported.call(images))}
    import tensorflow as tf
    served = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
    results["saved_model"] = served(images=tf.constant(images))["descriptors"].numpy()
    if os.path.exists(os.path.join(out, "descriptor.onnx")):
        import onnxruntime
        session = onnxruntime.InferenceSession(os.path.join(out, "descriptor.onnx"),
                                               providers=["CPUExecutionProvider"])
        results["onnx"] = session.run(["descriptors"], {"images": images})[0]
    assert not any(m.startswith("remap_jax") for m in sys.modules), "remap_jax was imported"
    np.savez(result_path, **results)
""")


def test_every_artifact_equals_the_extractor_in_a_fresh_process(exported, tmp_path):
    _, out, images, reference = exported
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "serve.py"
    script.write_text(FRESH_PROCESS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, str(script), out, str(tmp_path / "images.npy"), str(tmp_path / "r.npz")],
                   check=True, cwd=str(tmp_path), env=env, timeout=600)
    with np.load(tmp_path / "r.npz") as results:
        assert sorted(results.files) == sorted(["jax", "saved_model"] + (["onnx"] if ONNX else []))
        for name in results.files:
            got = results[name]
            assert got.shape == reference.shape and got.dtype == np.float32, name
            assert np.abs(got - reference).max() <= 1e-5, name
    meta = json.loads(open(os.path.join(out, export.METADATA_FILE)).read())
    assert meta["platforms"] == ["cpu", "cuda", "tpu"] and meta["image_size"] == list(SIZE)
    assert meta["descriptor_size"] == reference.shape[1] and meta["resize"] == "exact"
    assert meta["source"]["checkpoint"].endswith("checkpoint") and meta["versions"]["jax"] == jax.__version__


def test_saved_model_cli_runs_the_serving_signature(exported, tmp_path):
    _, out, images, reference = exported
    np.save(tmp_path / "images.npy", images)
    subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "run",
                    "--dir", os.path.join(out, export.SAVED_MODEL_DIR), "--tag_set", "serve",
                    "--signature_def", "serving_default", "--inputs", f"images={tmp_path / 'images.npy'}",
                    "--outdir", str(tmp_path / "cli")], check=True, capture_output=True, timeout=600)
    got = np.load(tmp_path / "cli" / "descriptors.npy")
    assert np.abs(got - reference).max() <= 1e-5


def test_from_exported_runs_the_input_pipeline(exported, tmp_path):
    checkpoint, out, _, _ = exported
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(70, 90), (90, 60), (48, 64), (33, 41), (120, 100)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(folder / f"{i}.png")
    paths = sorted(str(p) for p in folder.iterdir())
    expected = Extractor.from_checkpoint(checkpoint, resize="exact", batch_size=2)(paths)
    served = Extractor.from_exported(out, batch_size=2)
    assert served.image_size == SIZE and served.resize == "exact" and served.dim == expected.shape[1]
    assert np.abs(served(paths) - expected).max() <= 1e-5
    assert extract_cli.main(["--exported", out, "--images", str(folder), "--out", str(tmp_path / "f.npz"),
                             "--batch-size", "2", "--quiet"]) == 0
    with np.load(tmp_path / "f.npz") as f:
        assert np.abs(f["descriptors"] - expected).max() <= 1e-5
        assert json.loads(str(f["meta"]))["sha256"] == served.model.digest
    with pytest.raises(ValueError, match="descriptors only"):
        served.regions(paths)


def test_multiscale_artifact_holds_the_scales(exported, tmp_path):
    checkpoint, _, images, _ = exported
    extractor = Extractor.from_checkpoint(checkpoint, scales=(1.0, 0.75), scale_weights=(1.0, 0.5))
    meta = export.save_artifact(tmp_path / "ms", extractor, platforms=("cpu",))
    assert meta["scales"] == [1.0, 0.75] and meta["platforms"] == ["cpu"]
    got = export.ExportedDescriber(tmp_path / "ms")(images)
    expected = jax.jit(lambda v, x: describe_multiscale(extractor.model, v, x, (1.0, 0.75), (1.0, 0.5)))(
        extractor.variables, images)
    assert np.abs(got - np.asarray(expected)).max() <= 1e-5


def test_wrong_input_shape_or_dtype(exported):
    _, out, images, _ = exported
    describer = export.ExportedDescriber(out)
    with pytest.raises(export.ExportError, match=r"images: expected uint8 \(B, 48, 64, 3\) .* got float32"):
        describer(images.astype(np.float32))
    with pytest.raises(export.ExportError, match=r"got uint8 \(3, 64, 48, 3\)"):
        describer(images.transpose(0, 2, 1, 3))
    with pytest.raises(export.ExportError, match="images: expected uint8"):
        Extractor.from_exported(out).describe_batch(images[:, :32])


def _copy(out, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(out, target, ignore=shutil.ignore_patterns("saved_model", "*.onnx"))
    return target


def test_truncated_and_foreign_artifacts(exported, tmp_path):
    _, out, _, _ = exported
    truncated = _copy(out, tmp_path, "truncated")
    blob = (truncated / export.ARTIFACT_FILE).read_bytes()
    (truncated / export.ARTIFACT_FILE).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(export.ExportError, match="truncated or replaced"):
        Extractor.from_exported(truncated)

    foreign = _copy(out, tmp_path, "foreign")  # another function's artifact, metadata made to match its bytes
    other = jax.export.export(jax.jit(lambda x: x * 2.0), platforms=("cpu",))(
        jax.ShapeDtypeStruct((2, 3), np.float32)).serialize()
    _rewrite(foreign, bytes(other))
    with pytest.raises(export.ExportError, match="a foreign artifact"):
        export.load_artifact(foreign)
    garbage = _copy(out, tmp_path, "garbage")
    _rewrite(garbage, b"\x00not a jax export" * 64)
    with pytest.raises(export.ExportError, match="not a jax.export serialization"):
        export.load_artifact(garbage / export.ARTIFACT_FILE)
    altered = _copy(out, tmp_path, "altered")
    data = bytearray((altered / export.ARTIFACT_FILE).read_bytes())
    data[-100] ^= 0xFF
    (altered / export.ARTIFACT_FILE).write_bytes(bytes(data))
    with pytest.raises(export.ExportError, match="SHA-256 differs"):
        export.load_artifact(altered)
    (altered / export.METADATA_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(export.ExportError, match="not a remap-export file"):
        export.load_artifact(altered)
    (altered / export.METADATA_FILE).unlink()
    with pytest.raises(export.ExportError, match="no descriptor.json beside it"):
        export.load_artifact(altered)


def _rewrite(directory, blob: bytes):
    import hashlib

    (directory / export.ARTIFACT_FILE).write_bytes(blob)
    meta = json.loads((directory / export.METADATA_FILE).read_text())
    meta.update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (directory / export.METADATA_FILE).write_text(json.dumps(meta))


def test_platform_not_exported_for(exported, tmp_path):
    checkpoint, _, images, _ = exported
    export.save_artifact(tmp_path / "gpu", Extractor.from_checkpoint(checkpoint), platforms=("cuda", "tpu"))
    with pytest.raises(export.ExportError, match="exported for cuda, tpu, not for this device's platform"):
        Extractor.from_exported(tmp_path / "gpu")
    with pytest.raises(export.ExportError, match="not for this device's platform 'cpu'"):
        export.ExportedDescriber(tmp_path / "gpu")(images)


def test_commands_print_one_line_and_exit_2(exported, tmp_path, capsys):
    _, out, _, _ = exported
    broken = _copy(out, tmp_path, "broken")
    (broken / export.ARTIFACT_FILE).write_bytes(b"short")
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    capsys.readouterr()
    assert extract_cli.main(["--exported", str(broken), "--images", str(tmp_path / "imgs"),
                             "--out", str(tmp_path / "x.npz"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("remap-extract: artifact") and "truncated" in err and "\n" not in err
    assert export_cli.main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("remap-export: checkpoint") and "\n" not in err
    assert export_cli.main(["--arch", "resnet18", "--out", str(tmp_path / "o"), "--platforms", "gpu"]) == 2
    assert "platforms: expected some of cpu, cuda, rocm, tpu" in capsys.readouterr().err


@needs_onnx
@pytest.mark.parametrize("arch,taps", [("resnet18", ("layer3.1",)), ("vgg16", ("conv3_3",))])
def test_onnx_other_families(arch, taps, tmp_path):
    import onnxruntime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = Extractor.from_pretrained(arch, None, taps=taps, levels=2, image_size=(32, 32))
    path = export.save_onnx(tmp_path / "m.onnx", extractor)
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), np.uint8)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(["descriptors"], {"images": images})[0]
    assert np.abs(got - np.asarray(extractor.describe_batch(images))).max() <= 1e-5


def test_onnx_refusals_are_one_clear_error(exported, tmp_path, monkeypatch):
    checkpoint = exported[0]
    if ONNX:
        with pytest.raises(export.ExportError, match="float32 models only, this one computes in bfloat16"):
            export.save_onnx(tmp_path / "m.onnx", Extractor.from_checkpoint(checkpoint, dtype="bfloat16"))
    monkeypatch.setattr(export, "onnx_available", lambda: False)
    with pytest.raises(export.ExportError, match="jax2onnx is not installed"):
        export.save_onnx(tmp_path / "m.onnx", Extractor.from_checkpoint(checkpoint))
