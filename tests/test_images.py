"""Tests for remap_jax.data.images: decoding odd files, geometry, normalisation."""

import io

import numpy as np
import pytest
from PIL import Image

from remap_jax.data import images as I


def _png_bytes(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h=6, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_load_rgb_from_path_and_bytes(tmp_path):
    arr = _rgb()
    p = tmp_path / "a.png"
    Image.fromarray(arr).save(p)
    np.testing.assert_array_equal(I.load_rgb(p), arr)
    np.testing.assert_array_equal(I.load_rgb(str(p)), arr)
    np.testing.assert_array_equal(I.load_rgb(p.read_bytes()), arr)
    with open(p, "rb") as f:
        np.testing.assert_array_equal(I.load_rgb(f), arr)


def test_grayscale_becomes_three_equal_channels():
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    out = I.load_rgb(_png_bytes(Image.fromarray(gray, mode="L")))
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_16bit_grayscale_is_rescaled_not_clipped():
    gray16 = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    out = I.load_rgb(_png_bytes(Image.fromarray(gray16)))
    np.testing.assert_array_equal(out[..., 0], [[0, 255], [128, 1]])


def test_cmyk_jpeg_converts_to_rgb():
    cmyk = Image.new("CMYK", (5, 4), (0, 255, 255, 0))  # pure red in CMYK
    out = I.load_rgb(_png_bytes(cmyk, fmt="JPEG", quality=100))
    assert out.shape == (4, 5, 3)
    assert out[..., 0].min() > 200 and out[..., 1].max() < 60 and out[..., 2].max() < 60


def test_alpha_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent -> white
    rgba[1, 0] = (0, 0, 0, 128)  # half black -> mid grey
    out = I.load_rgb(_png_bytes(Image.fromarray(rgba, mode="RGBA")))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    assert 120 <= out[1, 0, 0] <= 130


def test_palette_with_transparency():
    pal = Image.new("P", (3, 3), 0)
    pal.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    pal.putpixel((1, 1), 1)
    data = _png_bytes(pal, transparency=0)
    out = I.load_rgb(data)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # transparent index -> white
    np.testing.assert_array_equal(out[1, 1], [0, 255, 0])


def test_exif_orientation_is_applied():
    arr = np.zeros((2, 4, 3), dtype=np.uint8)
    arr[0, 0] = 255  # white top-left pixel of a landscape image
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _png_bytes(img, exif=exif.tobytes())
    shown = I.load_rgb(data)
    raw = I.load_rgb(data, exif_transpose=False)
    assert raw.shape == (2, 4, 3)
    assert shown.shape == (4, 2, 3)
    assert shown[0, 1].min() == 255  # top-left moved to top-right


def test_decode_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(I.ImageDecodeError, match="broken.jpg"):
        I.load_rgb(bad)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(I.ImageDecodeError, match="empty.jpg.*empty"):
        I.load_rgb(empty)
    with pytest.raises(I.ImageDecodeError, match="missing.jpg.*not found"):
        I.load_rgb(tmp_path / "missing.jpg")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(I.encode_jpeg(_rgb(64, 64))[:200])
    with pytest.raises(I.ImageDecodeError, match="trunc.jpg"):
        I.load_rgb(truncated)
    with pytest.raises(I.ImageDecodeError, match="bytes"):
        I.load_rgb(b"")
    assert issubclass(I.ImageDecodeError, ValueError)


def test_resize_to_and_long_side():
    img = _rgb(30, 60)
    assert I.resize_to(img, (10, 7)).shape == (10, 7, 3)
    assert I.resize_long_side(img, 20).shape == (10, 20, 3)
    assert I.resize_long_side(_rgb(60, 30), 20).shape == (20, 10, 3)
    assert I.resize_long_side(_rgb(3, 300), 10).shape == (1, 10, 3)  # short side never 0
    assert I.resize_long_side(img, 120).shape == (60, 120, 3)
    assert I.resize_long_side(img, 120, upscale=False) is img
    flat = np.full((8, 8, 3), 77, np.uint8)
    np.testing.assert_array_equal(I.resize_to(flat, (3, 5), resample="bicubic"), 77)
    with pytest.raises(ValueError, match="size"):
        I.resize_to(img, (0, 4))
    with pytest.raises(ValueError, match="resample"):
        I.resize_to(img, (4, 4), resample="magic")
    with pytest.raises(ValueError, match=r"expected shape \(H, W, 3\)"):
        I.resize_to(np.zeros((4, 4), np.uint8), (2, 2))
    with pytest.raises(ValueError, match="uint8"):
        I.resize_long_side(np.zeros((4, 4, 3), np.float32), 2)


def test_crop_bbox_rounds_and_clips():
    img = _rgb(10, 20)
    np.testing.assert_array_equal(I.crop_bbox(img, (2, 3, 7, 9)), img[3:9, 2:7])
    np.testing.assert_array_equal(I.crop_bbox(img, (1.6, 0.4, 6.5, 8.51)), img[0:9, 2:6])
    np.testing.assert_array_equal(I.crop_bbox(img, (-5, -5, 100, 100)), img)
    with pytest.raises(ValueError, match="empty after clipping"):
        I.crop_bbox(img, (5, 5, 5, 8))
    with pytest.raises(ValueError, match="empty after clipping"):
        I.crop_bbox(img, (30, 0, 40, 5))


def test_normalize_matches_formula_and_inverts():
    batch = _rgb(4, 5)[None].repeat(2, axis=0)
    out = I.normalize(batch)
    assert out.dtype == np.float32 and out.shape == batch.shape
    expected = (batch / 255.0 - I.IMAGENET_MEAN) / I.IMAGENET_STD
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_array_equal(I.denormalize(out), batch)
    with pytest.raises(ValueError, match="channels-last"):
        I.normalize(np.zeros((2, 3, 4, 5), np.uint8))


def test_normalize_accepts_jax_arrays():
    import jax.numpy as jnp

    batch = _rgb(3, 3)[None]
    out = I.normalize(jnp.asarray(batch))
    np.testing.assert_allclose(np.asarray(out), I.normalize(batch), atol=1e-6)
