"""The Extractor: resizing buckets, crops, multi-scale, data parallel, failures, draft decoding (the
remap-extract command: test_extract_command.py)."""

import functools
import json
import warnings

import jax
import numpy as np
import pytest
from PIL import Image

from remap_jax import Extractor
from remap_jax.cli.extract import main
from remap_jax.data.images import ImageDecodeError, crop_bbox, load_rgb, resize_to
from remap_jax.describe.extractor import Described
from remap_jax.describe.pipeline import Failed, target_size
from remap_jax.describe.programs import fit_alpha
from remap_jax.model import combine_scales, save_exported

SIZE = (64, 96)  # landscape (height, width): stride-32 maps of 2x3, tiny and fast
ARGS = ["--arch", "resnet18", "--levels", "2", "--image-size", "64,96", "--batch-size", "2", "--quiet"]


def _pretrained(**options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no weights given, using a random backbone"
        opts = dict(levels=2, image_size=SIZE, batch_size=2, workers=2)
        opts.update(options)
        return Extractor.from_pretrained("resnet18", None, **opts)


@functools.cache
def _extractor():
    return _pretrained()


def _rng_images(shapes, seed=0):
    rng = np.random.default_rng(seed)
    # smooth random images (so resizing and JPEG do not turn them into noise)
    out = []
    for h, w in shapes:
        small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        out.append(resize_to(small, (h, w)))
    return out


@functools.cache
def _jit_apply(model):
    return jax.jit(model.apply)


def _manual(extractor, img, size=None, scales=(1.0,), weights=None):
    """What the Extractor should compute: resize the original to each scale, normalise, model, combine."""
    size = size or target_size(img.shape[0], img.shape[1], extractor.image_size, extractor.resize)
    descs = []
    for s in scales:
        scaled = (round(size[0] * s), round(size[1] * s))
        x = resize_to(img, scaled)[None]
        # region weights refitted to this map size where the extractor does so (constant alpha only)
        variables = fit_alpha(extractor.model, extractor.variables, scaled, extractor.image_size,
                              extractor._replicated)
        descs.append(_jit_apply(extractor.model)(variables, x))
    return np.asarray(combine_scales(descs, weights))[0]


def test_target_size():
    assert target_size(480, 640) == (768, 1024)
    assert target_size(640, 480) == (1024, 768)
    assert target_size(500, 500) == (768, 1024)
    assert target_size(480, 640, (1024, 768)) == (768, 1024)  # orientation of image_size does not matter
    assert target_size(300, 1000, resize="long_side") == (320, 1024)  # 307 -> nearest multiple of 64
    assert target_size(1000, 300, resize="long_side") == (1024, 320)
    assert target_size(10, 1000, resize="long_side") == (64, 1024)  # at least one bucket
    assert target_size(999, 1000, resize="long_side", bucket=32) == (1024, 1024)
    with pytest.raises(ValueError, match="resize: expected one of"):
        target_size(1, 1, resize="crop")


def test_descriptors_match_the_model_and_do_not_depend_on_batching():
    ex = _extractor()
    images = _rng_images([(100, 150), (150, 100), (80, 80), (60, 200), (200, 120)])
    d = ex(images)
    assert d.shape == (5, 512 + 512) and d.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, rtol=1e-5)
    for i in (0, 3):  # landscape; portrait shapes are checked in the command test
        np.testing.assert_allclose(d[i], _manual(ex, images[i]), rtol=1e-4, atol=2e-5)
    np.testing.assert_array_equal(ex(images[::-1])[::-1], d)
    np.testing.assert_array_equal(ex(images[3:4])[0], d[3])
    assert ex([]).shape == (0, 1024)


def test_describe_batch_is_the_compiled_call_of_describe_iter():
    ex = _extractor()
    images = np.stack([resize_to(img, SIZE) for img in _rng_images([SIZE, (90, 120)])])
    out = ex.describe_batch(images)  # host pixels: copied to the extractor's devices
    assert isinstance(out, jax.Array) and out.shape == (2, 1024) and out.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(out), ex(list(images)))
    np.testing.assert_array_equal(np.asarray(ex.describe_batch(jax.device_put(images))), np.asarray(out))
    with pytest.raises(ValueError, match=r"batch: expected uint8 \(B, H, W, 3\) pixels, got float32"):
        ex.describe_batch(images.astype(np.float32))
    with pytest.raises(ValueError, match="describe_batch: needs a single-scale extractor"):
        _pretrained(scales=(1.0, 0.5)).describe_batch(images)


def test_cpu_programs_are_compiled_without_library_fusions():
    """remap_jax.runtime.xla's CPU options reach the compiled program: convolutions are XLA's own (no YNNPACK
    fusion); the options are dropped where XLA_FLAGS names them, and other platforms get none."""
    from remap_jax.runtime import xla

    assert xla.compiler_options("cpu", xla_flags="") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert xla.compiler_options("cpu", xla_flags="--xla_cpu_experimental_ynn_fusion_type=X --a=1") == {}
    assert xla.compiler_options("gpu", xla_flags="") == {}
    ex = _extractor()
    batch = jax.ShapeDtypeStruct((2, *SIZE, 3), np.uint8)
    text = ex._compiled("descriptors").lower(ex._variables_for(SIZE), (batch,)).compile().as_text()
    assert "convolution(" in text and "ynn_fusion" not in text
    library = jax.jit(ex.model.apply).lower(ex.variables, batch).compile().as_text()
    assert "ynn_fusion" in library  # what jaxlib 0.10 does without the options (so the check above is live)


def test_bounding_box_crop():
    ex = _extractor()
    img = _rng_images([(120, 160)])[0]
    bbox = (10.4, 20, 150, 100.6)
    d = ex([img, img], bboxes=[bbox, None])
    np.testing.assert_allclose(d[0], ex([crop_bbox(img, bbox)])[0], rtol=1e-6)
    assert not np.allclose(d[0], d[1])
    with pytest.raises(ImageDecodeError, match="#0: bbox"):
        ex([img], bboxes=[(500, 500, 600, 600)])
    with pytest.raises(ValueError, match="bboxes: expected 1"):
        ex([img], bboxes=[None, None])


def test_multiscale_resizes_each_scale_from_the_original():
    ex = _extractor()
    ms = Extractor(ex.model, ex.variables, image_size=SIZE, scales=(1.0, 1.5), scale_weights=(1.0, 0.5))
    img = _rng_images([(130, 170)])[0]
    expected = _manual(ms, img, scales=(1.0, 1.5), weights=(1.0, 0.5))
    np.testing.assert_allclose(ms([img])[0], expected, rtol=1e-4, atol=2e-5)


def test_data_parallel_over_devices_matches_single_device():
    assert jax.local_device_count() == 8  # tests/conftest.py simulates 8 CPU devices
    ex = _extractor()
    images = _rng_images([(70, 90)] * 5 + [(90, 70)] * 3, seed=3)
    sharded = Extractor(ex.model, ex.variables, image_size=SIZE, batch_size=8, data_parallel=True)
    np.testing.assert_allclose(sharded(images), ex(images), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not a multiple of the 8 devices"):
        Extractor(ex.model, ex.variables, image_size=SIZE, batch_size=6, data_parallel=True)


def test_aspect_preserving_buckets_and_region_weights():
    ex = _extractor()
    aspect = Extractor(ex.model, ex.variables, image_size=SIZE, resize="long_side", bucket=32)
    img = _rng_images([(40, 100)])[0]  # long side 96, short side 38.4 -> 32: a 1x3 map, other regions
    np.testing.assert_allclose(aspect([img])[0], _manual(aspect, img, size=(32, 96)), rtol=1e-4, atol=2e-5)
    # Learned (non-constant) region weights belong to one map shape: a clear error for other shapes.
    params = jax.tree.map(np.asarray, ex.variables["params"])
    alpha = params["head"]["stream_layer4_0"]["alpha"]
    params["head"]["stream_layer4_0"]["alpha"] = np.linspace(0.5, 1.5, alpha.shape[0]).astype(np.float32)
    learned = Extractor(ex.model, {**ex.variables, "params": params}, image_size=SIZE, resize="long_side",
                        bucket=32)
    learned([_rng_images([(60, 90)])[0]])  # same shape as training: fine
    with pytest.raises(ValueError, match="learned region weights.*resize='fixed'"):
        learned([img])


def test_failures_are_listed():
    ex = _extractor()
    good = _rng_images([(64, 96)])[0]
    with pytest.raises(ImageDecodeError, match=r"2 of 3 could not be described: #1: .*#2: expected a uint8"):
        ex([good, b"not an image", np.zeros((5, 5), np.uint8)])


def test_from_checkpoint(tmp_path):
    ex = _extractor()
    config = {"arch": "resnet18", "taps": list(ex.model.taps), "head": "remap", "levels": 2, "whiten": False,
              "image_size": list(SIZE), "scales": [1.0, 1.25], "scale_weights": [1.0, 1.0]}
    save_exported(str(tmp_path / "export"), config, ex.variables)
    loaded = Extractor.from_checkpoint(str(tmp_path), batch_size=2)  # a workdir holding export/
    assert loaded.scales == (1.0, 1.25) and loaded.image_size == SIZE
    img = _rng_images([(100, 100)])[0]
    expected = _manual(ex, img, scales=(1.0, 1.25))
    np.testing.assert_allclose(loaded([img])[0], expected, rtol=1e-4, atol=2e-5)
    single = Extractor.from_checkpoint(str(tmp_path / "export"), scales=(1.0,), batch_size=2)
    np.testing.assert_allclose(single([img])[0], ex([img])[0], rtol=1e-5, atol=1e-6)


def test_describe_iter_reports_in_completion_order():
    ex = _extractor()
    items = list(ex.describe_iter(_rng_images([(64, 96), (96, 64), (64, 96)]) + [b""], indices=[0, 1, 2, 3]))
    failed = [i for i in items if isinstance(i, Failed)]
    described = [i for i in items if isinstance(i, Described)]
    assert [f.index for f in failed] == [3]
    assert sorted(np.concatenate([d.indices for d in described]).tolist()) == [0, 1, 2]


def test_draft_decoding_of_large_jpegs_is_close_and_can_be_turned_off(tmp_path):
    """JPEGs at least twice the target size are decoded at a reduced scale (`decode_resized`): descriptors
    stay close to full decoding, bboxes crop the same region, and draft=False gives load_rgb's pixels."""
    from remap_jax.data.images import decode_resized

    images = _rng_images([(256, 384), (400, 260)], seed=7)  # 4x and ~4x the 64x96 / 96x64 targets
    paths = []
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"big{i}.jpg", quality=95)
        paths.append(str(tmp_path / f"big{i}.jpg"))
    assert decode_resized(paths[0], [SIZE]).draft_scale == 4
    bboxes = [None, (20.5, 30, 240, 330)]
    exact = _pretrained(draft=False)
    full = exact(paths, bboxes)
    drafted = _extractor()(paths, bboxes)
    manual = [_manual(exact, load_rgb(paths[0])), _manual(exact, crop_bbox(load_rgb(paths[1]), bboxes[1]))]
    np.testing.assert_allclose(full, np.stack(manual), rtol=1e-4, atol=2e-5)
    cosines = np.sum(full * drafted, axis=1)
    assert np.all(cosines > 0.995), cosines
    assert exact.fingerprint() != _extractor().fingerprint()  # caches of one are not reused by the other
    # the command: draft by default, --no-draft decodes every pixel (recorded in the output's meta)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "big0.jpg").write_bytes((tmp_path / "big0.jpg").read_bytes())
    for flag, expected in (([], drafted[:1]), (["--no-draft"], full[:1])):
        out = tmp_path / f"db{len(flag)}.npz"
        assert main([*ARGS, "--images", str(tmp_path / "one"), "--out", str(out), *flag]) == 0
        with np.load(out) as f:
            np.testing.assert_allclose(f["descriptors"], expected, rtol=1e-4, atol=2e-5)
            assert json.loads(str(f["meta"]))["draft"] is (not flag)


def test_input_batches_is_the_pipeline_without_the_model():
    """`input_batches` yields what describe_iter feeds the model: padded device batches per static shape."""
    ex = _extractor()
    images = _rng_images([(100, 150), (150, 100), (80, 80)]) + [np.zeros((0, 3, 3), np.uint8)]
    items = list(ex.input_batches(images))
    failed = [item for item in items if isinstance(item, Failed)]
    batches = [item for item in items if not isinstance(item, Failed)]
    assert [f.index for f in failed] == [3]
    assert sorted(i for idx, _, _, _ in batches for i in idx) == [0, 1, 2]
    for idx, count, (batch,), size in batches:
        assert count == len(idx) and isinstance(batch, jax.Array)
        assert batch.shape == (ex.batch_size, *size, 3) and batch.dtype == np.uint8
    lowered = ex.lower_batch(jax.ShapeDtypeStruct((2, *SIZE, 3), np.uint8))
    assert lowered.compile().cost_analysis()["flops"] > 0  # the roofline's program: describe_batch's
