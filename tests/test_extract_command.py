"""remap-extract: odd files, list files with boxes, resume after an interruption, the periodic partial
file, argument errors, shards that merge back into the whole (the Extractor itself: test_extract.py)."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from test_extract import ARGS, _extractor, _rng_images

from remap_jax import Extractor
from remap_jax.cli.extract import list_images, main, partial_path
from remap_jax.data.images import ImageDecodeError, crop_bbox, load_rgb
from remap_jax.runtime import atomic


def _write_odd_images(folder):
    """Every kind of file the command must cope with; returns {name: expected outcome}."""
    os.makedirs(folder / "sub", exist_ok=True)
    base = _rng_images([(72, 108)], seed=7)[0]
    pil = Image.fromarray(base)
    pil.save(folder / "rgb.jpg", quality=95)
    pil.convert("L").save(folder / "gray.png")
    pil.convert("CMYK").save(folder / "cmyk.jpg")
    pil.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    rgba = pil.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "sub" / "alpha.png")
    Image.fromarray(base[..., 0].astype(np.uint16) * 257).save(folder / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed: a landscape file shown as portrait
    pil.save(folder / "exif.jpg", exif=exif, quality=95)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not listed")
    readable = ["cmyk.jpg", "exif.jpg", "gray.png", "palette.png", "rgb.jpg", "sixteen.png", "sub/alpha.png"]
    try:  # whatever the shared decoder decides about truncated files, the command must agree with it
        load_rgb(str(folder / "truncated.jpg"))
        readable.append("truncated.jpg")
    except ImageDecodeError:
        pass
    return sorted(readable), sorted({"corrupt.jpg", "empty.png", "truncated.jpg"} - set(readable))


def test_command_odd_images(tmp_path, capsys):
    folder = tmp_path / "images"
    readable, unreadable = _write_odd_images(folder)
    out = tmp_path / "db.npz"
    assert main([*ARGS, "--images", str(folder), "--out", str(out)]) == 0
    with np.load(out) as f:
        ids, desc, failed = list(f["ids"]), f["descriptors"], list(f["failed"])
        reasons = list(f["failed_reasons"])
        meta = json.loads(str(f["meta"]))
    assert ids == readable and sorted(failed) == unreadable
    assert all("cannot decode" in r or "empty" in r for r in reasons)
    assert desc.shape == (len(readable), 1024)
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, rtol=1e-5)
    assert meta["arch"] == "resnet18" and meta["scales"] == [1.0]
    assert not os.path.exists(partial_path(str(out)))
    # The EXIF-rotated file is described as displayed (portrait), like the rotated pixels.
    raw = load_rgb(str(folder / "exif.jpg"), exif_transpose=False)
    rotated = np.ascontiguousarray(np.rot90(raw, k=-1))
    ex = _extractor()
    np.testing.assert_allclose(desc[ids.index("exif.jpg")], ex([rotated])[0], rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(desc[ids.index("gray.png")], ex([load_rgb(str(folder / "gray.png"))])[0],
                               rtol=1e-4, atol=2e-5)
    err = capsys.readouterr().err
    assert "failed: corrupt.jpg" in err and "img/s" in err


def test_list_file_with_bboxes(tmp_path):
    images = _rng_images([(80, 120), (120, 80)], seed=5)
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"q {i}.png")
    listing = tmp_path / "queries.txt"
    listing.write_text("# query list\nq 0.png 10 5 90 70\n\nq 1.png\nmissing.png\n")
    ids, paths, bboxes = list_images(str(listing))
    assert ids == ["q 0.png", "q 1.png", "missing.png"]
    assert bboxes == [(10.0, 5.0, 90.0, 70.0), None, None]
    assert paths[0] == str(tmp_path / "q 0.png")
    out = tmp_path / "q.npz"
    assert main([*ARGS, "--images", str(listing), "--out", str(out)]) == 0
    with np.load(out) as f:
        assert list(f["ids"]) == ["q 0.png", "q 1.png"] and list(f["failed"]) == ["missing.png"]
        np.testing.assert_allclose(f["descriptors"][0], _extractor()([crop_bbox(images[0], bboxes[0])])[0],
                                   rtol=1e-4, atol=2e-5)
    (tmp_path / "dup.txt").write_text("a.png\na.png\n")
    with pytest.raises(ValueError, match="duplicate entries"):
        list_images(str(tmp_path / "dup.txt"))
    assert main([*ARGS, "--images", str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_command_resumes_after_interruption(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(_rng_images([(64, 96)] * 7, seed=11)):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    (folder / "bad.png").write_bytes(b"broken")
    out = str(tmp_path / "db.npz")
    reference = str(tmp_path / "ref.npz")
    assert main([*ARGS, "--images", str(folder), "--out", reference]) == 0

    original = Extractor.describe_iter
    seen = []

    def interrupted(self, sources, bboxes=None, indices=None, **kwargs):
        seen.append(list(indices))
        for n, item in enumerate(original(self, sources, bboxes, indices, **kwargs)):
            if n == 3:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(Extractor, "describe_iter", interrupted)
    assert main([*ARGS, "--images", str(folder), "--out", out, "--save-every", "100"]) == 130
    with np.load(partial_path(out)) as f:
        first = list(f["ids"]) + list(f["failed"])
    assert 3 <= len(first) < 8 and not os.path.exists(out)
    assert "progress saved" in capsys.readouterr().err

    # A resume with other settings refuses to mix descriptors.
    monkeypatch.setattr(Extractor, "describe_iter", original)
    with pytest.raises(SystemExit, match="other settings"):
        main([*ARGS, "--images", str(folder), "--out", out, "--scales", "1,1.25"])

    calls = []

    def counting(self, sources, bboxes=None, indices=None, **kwargs):
        calls.append(list(indices))
        yield from original(self, sources, bboxes, indices, **kwargs)

    monkeypatch.setattr(Extractor, "describe_iter", counting)
    assert main([*ARGS, "--images", str(folder), "--out", out]) == 0
    assert len(calls[0]) == 8 - len(first)  # only what was not finished
    assert "resuming from" in capsys.readouterr().err
    with np.load(out) as f, np.load(reference) as g:
        assert list(f["ids"]) == list(g["ids"]) == [f"{i:02d}.png" for i in range(7)]
        assert list(f["failed"]) == ["bad.png"]
        np.testing.assert_allclose(f["descriptors"], g["descriptors"], rtol=1e-6)
    assert not os.path.exists(partial_path(out))


def test_partial_file_is_written_periodically(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(_rng_images([(64, 96)] * 6, seed=2)):
        Image.fromarray(img).save(folder / f"{i}.png")
    writes = []
    real = atomic.save_npz

    def spy(path, **arrays):
        writes.append((os.path.basename(path), len(arrays["ids"])))
        real(path, **arrays)

    monkeypatch.setattr(atomic, "save_npz", spy)
    out = str(tmp_path / "o.npz")
    assert main([*ARGS, "--images", str(folder), "--out", out, "--save-every", "1"]) == 0
    assert writes[-1] == ("o.npz", 6)
    partial_sizes = [n for name, n in writes if name == "o.partial.npz"]
    assert partial_sizes == [2, 4, 6]


def test_command_argument_errors(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(_rng_images([(64, 96)])[0]).save(folder / "a.png")
    out = str(tmp_path / "o.npz")
    with pytest.raises(SystemExit, match="--arch .*or --checkpoint"):
        main(["--images", str(folder), "--out", out])
    with pytest.raises(SystemExit, match="not both"):
        main(["--images", str(folder), "--out", out, "--checkpoint", "x", "--arch", "resnet18"])
    with pytest.raises(SystemExit, match="comma-separated numbers"):
        main([*ARGS, "--images", str(folder), "--out", out, "--scales", "1,big"])


def test_shards_are_disjoint_cover_the_input_once_and_merge_back(tmp_path):
    from remap_jax.describe.descriptor_files import load_features

    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(_rng_images([(64, 96)] * 7, seed=4)):
        Image.fromarray(img).save(folder / f"{i}.png")
    whole = str(tmp_path / "whole.npz")
    assert main([*ARGS, "--images", str(folder), "--out", whole]) == 0
    for i in range(3):
        assert main([*ARGS, "--images", str(folder), "--out", str(tmp_path / f"part.{i}.npz"),
                     "--shard", f"{i}/3"]) == 0
    sizes = [len(np.load(tmp_path / f"part.{i}.npz")["ids"]) for i in range(3)]
    assert sizes == [3, 2, 2]
    merged, ids = load_features(str(tmp_path / "part.*.npz"))
    with np.load(whole) as f:
        assert list(ids) == list(f["ids"])  # shards of the sorted list, merged in name order: the whole
        np.testing.assert_allclose(merged, f["descriptors"], rtol=1e-6, atol=1e-7)
    meta = json.loads(str(np.load(tmp_path / "part.1.npz")["meta"]))
    assert meta["shard"] == [1, 3]
    with pytest.raises(SystemExit):
        main([*ARGS, "--images", str(folder), "--out", whole, "--shard", "3/3"])
    assert main([*ARGS, "--images", str(folder), "--out", whole, "--shard", "7/8"]) == 2  # an empty share
