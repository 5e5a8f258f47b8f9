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


# ------------------------------------------------------------------------------ decode_resized (draft)

def _scene(h, w, seed=0):
    """A smooth photo-like uint8 (h, w, 3) image (JPEG-friendly: gradients and blobs, little noise)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.4) * max(h, w)
            out[..., c] += rng.uniform(40, 120) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    out += 60 * np.sin(x / w * 7.0 + y / h * 3.0)[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _jpeg(arr, exif_orientation=None, mode=None, quality=95):
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    kw = {}
    if exif_orientation:
        exif = img.getexif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    return _png_bytes(img, fmt="JPEG", quality=quality, **kw)


def test_draft_scale_keeps_the_target_and_needs_twice_the_size():
    assert I.draft_scale((768, 1024), (768, 1024)) == 1
    assert I.draft_scale((1535, 2048), (768, 1024)) == 1  # not twice in height
    assert I.draft_scale((1536, 2048), (768, 1024)) == 2
    assert I.draft_scale((3024, 4032), (768, 1024)) == 2  # 3.94x: 1/4 would go below the target
    assert I.draft_scale((3072, 4096), (768, 1024)) == 4
    assert I.draft_scale((6144, 8192), (768, 1024)) == 8
    assert I.draft_scale((10000, 10000), (100, 100)) == 8  # 1/8 is the decoder's largest reduction


def test_decode_resized_drafts_only_large_jpegs():
    big = _scene(256, 320)
    data = _jpeg(big)
    for size, scale in [((64, 80), 4), ((128, 160), 2), ((129, 160), 1), ((32, 40), 8), ((256, 320), 1)]:
        out = I.decode_resized(data, [size])
        assert out.draft_scale == scale, size
        assert out.images[0].shape == (*size, 3) and out.images[0].dtype == np.uint8
        assert out.source_size == (256, 320)
    exact = I.decode_resized(data, [(64, 80)], draft=False)
    assert exact.draft_scale == 1
    np.testing.assert_array_equal(exact.images[0], I.resize_to(I.load_rgb(data), (64, 80)))
    # PNG and arrays have no draft: the same pixels as load_rgb + resize_to
    png = _png_bytes(Image.fromarray(big))
    for source in (png, big):
        out = I.decode_resized(source, [(64, 80)])
        assert out.draft_scale == 1
        np.testing.assert_array_equal(out.images[0], I.resize_to(big, (64, 80)))
    # several targets: the scale keeps the largest at least its size
    out = I.decode_resized(data, [(64, 80), (128, 160)])
    assert out.draft_scale == 2 and [a.shape[:2] for a in out.images] == [(64, 80), (128, 160)]


def test_draft_decoding_is_close_to_full_decoding():
    data = _jpeg(_scene(512, 640, seed=3))
    for size in [(64, 80), (128, 160), (100, 300)]:
        drafted = I.decode_resized(data, [size]).images[0].astype(np.float32)
        full = I.decode_resized(data, [size], draft=False).images[0].astype(np.float32)
        assert np.abs(drafted - full).mean() < 1.5, size
        assert np.abs(drafted - full).max() < 24, size


def test_draft_keeps_exif_orientation_and_the_sizes_function_sees_it():
    arr = _scene(256, 384, seed=1)
    arr[:32, :32] = (255, 0, 0)  # a red corner, top-left as stored
    data = _jpeg(arr, exif_orientation=6)  # displayed rotated 90 degrees clockwise: portrait 384 x 256
    seen = []

    def sizes(h, w):
        seen.append((h, w))
        return [(h // 4, w // 4)]

    shown = I.decode_resized(data, sizes)
    assert seen == [(384, 256)] and shown.draft_scale == 4 and shown.source_size == (384, 256)
    full = I.decode_resized(data, sizes, draft=False)
    assert shown.images[0].shape == full.images[0].shape == (96, 64, 3)
    assert shown.images[0][2, -3, 0] > 200 and shown.images[0][2, -3, 1] < 60  # red corner now top-right
    assert np.abs(shown.images[0].astype(int) - full.images[0]).mean() < 1.5
    raw = I.decode_resized(data, [(64, 96)], exif_transpose=False)
    assert raw.source_size == (256, 384) and raw.images[0][2, 2, 0] > 200


def test_draft_crops_the_same_region_as_full_decoding():
    arr = _scene(480, 640, seed=2)
    arr[200:280, 300:420] = (0, 0, 255)  # a blue box inside the crop
    data = _jpeg(arr)
    bbox = (250.4, 150.0, 470.0, 329.6)  # floats, rounded like crop_bbox: 220 x 180 pixels
    drafted = I.decode_resized(data, [(45, 55)], bbox=bbox)
    full = I.decode_resized(data, [(45, 55)], bbox=bbox, draft=False)
    assert drafted.draft_scale == 4 and drafted.source_size == full.source_size == (180, 220)
    np.testing.assert_array_equal(full.images[0], I.resize_to(I.crop_bbox(I.load_rgb(data), bbox), (45, 55)))
    diff = np.abs(drafted.images[0].astype(int) - full.images[0])
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 30  # the box edge lines up
    with pytest.raises(ValueError, match="^bbox: .* is empty after clipping"):  # the caller's error
        I.decode_resized(data, [(4, 4)], bbox=(700, 0, 800, 10))


def test_draft_gray_and_cmyk_jpegs_become_rgb():
    arr = _scene(256, 256, seed=4)
    for mode in ("L", "CMYK"):
        data = _jpeg(arr, mode=mode)
        drafted = I.decode_resized(data, [(64, 64)])
        full = I.decode_resized(data, [(64, 64)], draft=False)
        assert drafted.draft_scale == 4 and drafted.images[0].shape == (64, 64, 3)
        assert np.abs(drafted.images[0].astype(int) - full.images[0]).mean() < 1.5, mode
        if mode == "L":
            assert np.array_equal(drafted.images[0][..., 0], drafted.images[0][..., 2])


def test_decode_resized_errors_name_the_source(tmp_path):
    with pytest.raises(I.ImageDecodeError, match="missing.jpg.*not found"):
        I.decode_resized(tmp_path / "missing.jpg", [(4, 4)])
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(_jpeg(_scene(64, 64))[:200])
    with pytest.raises(I.ImageDecodeError, match="trunc.jpg"):
        I.decode_resized(truncated, [(8, 8)])
    with pytest.raises(ValueError, match="sizes"):
        I.decode_resized(_scene(8, 8), [])
