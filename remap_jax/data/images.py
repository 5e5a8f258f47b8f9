"""Image decoding and geometry helpers: uint8 (H, W, 3) RGB arrays in, arrays out.

Every loader in the project goes through :func:`load_rgb`, so all of them agree on how odd files are
handled: grayscale and 16-bit images become RGB, CMYK is converted, palette and alpha images are composited
on white, and the EXIF orientation tag is applied. A file that cannot be decoded raises
:class:`ImageDecodeError` naming the file.

What feeds a model goes through :func:`decode_resized` (the Extractor's workers and the training images):
decode, crop, resize to the model's static shapes in one call. JPEGs at least twice the largest target size
are decoded at 1/2, 1/4 or 1/8 scale by the JPEG decoder itself (PIL's ``Image.draft``, DCT scaling), which
makes 12-megapixel photos several times faster to decode; ``draft=False`` decodes every pixel.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Decoded",
    "ImageDecodeError",
    "ImageList",
    "crop_bbox",
    "decode_resized",
    "denormalize",
    "draft_scale",
    "encode_jpeg",
    "load_rgb",
    "normalize",
    "resize_long_side",
    "resize_to",
]

#: ImageNet channel statistics (RGB, for pixel values scaled to [0, 1]), what torchvision weights expect.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


class ImageDecodeError(ValueError):
    """An image file or byte string could not be decoded; the message names the source."""


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return repr(source)[:80]


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Converts any PIL mode to a uint8 (H, W, 3) RGB array."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit / 32-bit / float grayscale: PIL's convert("RGB") clips at 255, so rescale ourselves.
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max(initial=0.0)), 255.0)
        if mode == "F" and arr.max(initial=0.0) <= 1.0:
            top = 1.0
        gray = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    has_alpha = "A" in mode or "a" in mode or (mode == "P" and "transparency" in img.info)
    if mode == "L" and "transparency" in img.info:
        has_alpha = True
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = img.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8).copy()


def _stream(path_or_bytes, name: str):
    """What `Image.open` reads for a path, bytes or file object; ImageDecodeError for missing/empty ones."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        if len(path_or_bytes) == 0:
            raise ImageDecodeError(f"image {name}: empty byte string, expected an encoded image")
        return io.BytesIO(bytes(path_or_bytes))
    if isinstance(path_or_bytes, (str, os.PathLike)):
        if not os.path.exists(path_or_bytes):
            raise ImageDecodeError(f"image {name}: file not found")
        if os.path.getsize(path_or_bytes) == 0:
            raise ImageDecodeError(f"image {name}: file is empty, expected an encoded image")
        return path_or_bytes
    if hasattr(path_or_bytes, "read"):
        return path_or_bytes
    raise ImageDecodeError(
        f"image {name}: expected a path, bytes or a binary file object, got {type(path_or_bytes)}"
    )


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError)


@contextlib.contextmanager
def _decode_errors(name: str):
    """Turns what PIL raises for a bad file into an ImageDecodeError naming the source."""
    try:
        yield
    except ImageDecodeError:
        raise
    except _DECODE_ERRORS as e:
        raise ImageDecodeError(f"image {name}: cannot decode ({type(e).__name__}: {e})") from e


def _loaded(img: Image.Image, name: str, exif_transpose: bool) -> np.ndarray:
    """Decodes an opened image (after any `draft`) into uint8 (H, W, 3) RGB, EXIF orientation applied."""
    img.load()
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    if img.width == 0 or img.height == 0:
        raise ImageDecodeError(f"image {name}: zero-sized image {img.size}")
    return _to_rgb(img)


def load_rgb(path_or_bytes, *, exif_transpose: bool = True) -> np.ndarray:
    """Decodes an image file into a uint8 (H, W, 3) RGB array.

    Args:
      path_or_bytes: a path (str or PathLike), the encoded bytes, or a binary file object.
      exif_transpose: apply the EXIF orientation tag (what a photo viewer shows). Set False to keep the raw
        pixel order, e.g. when bounding boxes were drawn on the raw pixels.

    Returns:
      uint8 array of shape (H, W, 3).

    Raises:
      ImageDecodeError: the source is missing, empty, truncated or not an image.
    """
    name = _describe(path_or_bytes)
    with _decode_errors(name), Image.open(_stream(path_or_bytes, name)) as img:
        return _loaded(img, name, exif_transpose)


class Decoded(NamedTuple):
    """What :func:`decode_resized` returns.

    images: one uint8 (h, w, 3) array per requested size. source_size: (height, width) in pixels of the
    oriented, cropped source before any scaling. draft_scale: 1 when every pixel was decoded, 2, 4 or 8 when
    the JPEG decoder produced the image at 1/draft_scale of its size.
    """

    images: tuple[np.ndarray, ...]
    source_size: tuple[int, int]
    draft_scale: int


#: JPEG DCT scaling factors PIL's decoder offers, largest first.
DRAFT_SCALES = (8, 4, 2)
_EXIF_ORIENTATION = 0x0112


def draft_scale(source_size: Sequence[int], target_size: Sequence[int]) -> int:
    """The largest JPEG reduction (8, 4 or 2; 1 for none) that keeps an image of `source_size` = (h, w)
    pixels at least `target_size` = (h, w) in both dimensions, so the final resize still downsamples.
    A reduction is used only when the source is at least twice the target in both dimensions."""
    ratio = min(source_size[0] / target_size[0], source_size[1] / target_size[1])
    return next((s for s in DRAFT_SCALES if ratio >= s), 1)


SizesArg = Sequence[Sequence[int]] | Callable[[int, int], Sequence[Sequence[int]]]


def _targets(sizes: SizesArg, height: int, width: int) -> list[tuple[int, int]]:
    targets = sizes(height, width) if callable(sizes) else sizes
    out = [(int(h), int(w)) for h, w in targets]
    if not out or min(min(t) for t in out) < 1:
        raise ValueError(f"sizes: expected one or more (height, width) >= 1, got {out}")
    return out


def _crop_resize(img: np.ndarray, sizes: SizesArg, bbox, resample: str) -> Decoded:
    if bbox is not None:
        img = crop_bbox(img, bbox)
    h, w = img.shape[:2]
    return Decoded(tuple(resize_to(img, t, resample) for t in _targets(sizes, h, w)), (h, w), 1)


def decode_resized(
    source,
    sizes: SizesArg,
    *,
    bbox: Sequence[float] | None = None,
    draft: bool = True,
    exif_transpose: bool = True,
    resample: str = "bilinear",
) -> Decoded:
    """Decodes `source`, crops it to `bbox` and resizes it to every size of `sizes`: the one decode path
    of everything that feeds a model (the Extractor's workers, training images).

    Args:
      source: a path, encoded bytes, a binary file object, or a uint8 (H, W, 3) array (cropped and resized
        only).
      sizes: the (height, width) targets, or a function (height, width) of the oriented, cropped source in
        its own pixels -> the targets (e.g. the Extractor's orientation-dependent shapes).
      bbox: optional (x0, y0, x1, y1) crop in the source's pixels after EXIF orientation (see `crop_bbox`).
      draft: let the JPEG decoder scale by 1/2, 1/4 or 1/8 (`draft_scale` of the crop and the largest
        target) before the resize; False decodes every pixel (exactly `load_rgb` + `crop_bbox` +
        `resize_to`, at several times the cost for large photos).
      exif_transpose: apply the EXIF orientation tag (see `load_rgb`).
      resample: the resize filter (see `resize_to`).

    With draft scaling the crop box is divided by the scale and the resize reads that sub-pixel box of the
    reduced image (PIL's `resize(box=...)`), so the same region of the scene is kept. The descriptor change
    draft scaling causes is measured in docs/decoding.md.

    Raises:
      ImageDecodeError: the source cannot be decoded. ValueError: the crop is empty or a size is invalid.
    """
    if isinstance(source, np.ndarray):
        return _crop_resize(_check_image(source, "source"), sizes, bbox, resample)
    name = _describe(source)
    with _decode_errors(name):
        img = Image.open(_stream(source, name))
    with img:
        scale, box, targets, crop_size = 1, None, None, None
        if draft and img.format in ("JPEG", "MPO"):
            with _decode_errors(name):
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if exif_transpose else 1
            h, w = (img.width, img.height) if orientation in (5, 6, 7, 8) else (img.height, img.width)
            # an empty crop or a bad size is the caller's ValueError, not the file's
            box = (0, 0, w, h) if bbox is None else _bbox_pixels(bbox, h, w)
            crop_size = (box[3] - box[1], box[2] - box[0])
            targets = _targets(sizes, *crop_size)
            largest = (max(t[0] for t in targets), max(t[1] for t in targets))
            scale = draft_scale(crop_size, largest)
            if scale > 1:
                # in stored (unrotated) pixels; W // (W // s) == s, so PIL picks exactly this scale
                stored_width = img.width
                with _decode_errors(name):
                    drafted = img.draft(img.mode, (img.width // scale, img.height // scale))
                scale = 1 if drafted is None else int(round(stored_width / drafted[1][2]))
        with _decode_errors(name):
            rgb = _loaded(img, name, exif_transpose)
    if scale == 1:
        return _crop_resize(rgb, sizes if targets is None else targets, bbox, resample)
    reduced = Image.fromarray(rgb)
    sub_box = tuple(v / scale for v in box)
    images = tuple(np.asarray(reduced.resize((tw, th), resample=_resample(resample), box=sub_box), np.uint8)
                   for th, tw in targets)
    return Decoded(images, crop_size, scale)


def _check_image(img: np.ndarray, name: str = "img") -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (H, W, 3), got {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {img.dtype}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {img.shape}")
    return img


def _resample(name: str):
    try:
        return _RESAMPLE[name]
    except KeyError:
        raise ValueError(f"resample: expected one of {sorted(_RESAMPLE)}, got {name!r}") from None


def resize_to(img: np.ndarray, size: Sequence[int], resample: str = "bilinear") -> np.ndarray:
    """Resizes a uint8 (H, W, 3) image to exactly ``size = (height, width)`` (aspect ratio not kept)."""
    img = _check_image(img)
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"size: expected (height, width) with both >= 1, got {tuple(size)}")
    h, w = int(size[0]), int(size[1])
    if (h, w) == img.shape[:2]:
        return img
    out = Image.fromarray(img).resize((w, h), resample=_resample(resample))
    return np.asarray(out, dtype=np.uint8)


def resize_long_side(img: np.ndarray, n: int, resample: str = "bilinear", upscale: bool = True) -> np.ndarray:
    """Resizes a uint8 (H, W, 3) image so that its longer side is ``n`` pixels, keeping the aspect ratio.

    The short side is rounded to the nearest integer (at least 1). With ``upscale=False`` images whose long
    side is already <= n are returned unchanged (like PIL's ``thumbnail``).
    """
    img = _check_image(img)
    if int(n) < 1:
        raise ValueError(f"n: expected a long side >= 1 pixel, got {n}")
    h, w = img.shape[:2]
    long_side = max(h, w)
    if long_side == n or (not upscale and long_side <= n):
        return img
    scale = n / long_side
    new_h = n if h >= w else max(1, int(round(h * scale)))
    new_w = n if w > h else max(1, int(round(w * scale)))
    return resize_to(img, (new_h, new_w), resample=resample)


def _bbox_pixels(bbox: Sequence[float], h: int, w: int) -> tuple[int, int, int, int]:
    """`bbox` = (x0, y0, x1, y1) rounded like PIL's `crop` and clipped to an (h, w) image; ValueError when
    the clipped box is empty."""
    if len(bbox) != 4:
        raise ValueError(f"bbox: expected (x0, y0, x1, y1), got {tuple(bbox)}")
    x0, y0, x1, y1 = (int(round(float(v))) for v in bbox)
    cx0, cy0 = min(max(x0, 0), w), min(max(y0, 0), h)
    cx1, cy1 = min(max(x1, 0), w), min(max(y1, 0), h)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(
            f"bbox: {tuple(bbox)} is empty after clipping to the image of size (H={h}, W={w}); "
            "expected x0 < x1 and y0 < y1 inside the image"
        )
    return cx0, cy0, cx1, cy1


def crop_bbox(img: np.ndarray, bbox: Sequence[float]) -> np.ndarray:
    """Crops a uint8 (H, W, 3) image to ``bbox = (x0, y0, x1, y1)`` in pixels (x1, y1 exclusive).

    Coordinates may be floats (the ROxford/RParis ground truth is); they are rounded like PIL's ``crop`` and
    clipped to the image. Raises ValueError when the clipped box is empty.
    """
    img = _check_image(img)
    cx0, cy0, cx1, cy1 = _bbox_pixels(bbox, *img.shape[:2])
    return img[cy0:cy1, cx0:cx1].copy()


def normalize(images, mean: np.ndarray = IMAGENET_MEAN, std: np.ndarray = IMAGENET_STD):
    """Input normalisation: pixels (..., 3) in [0, 255] -> float32 ``(x / 255 - mean) / std``.

    `mean`, `std`: RGB statistics for pixels scaled to [0, 1] (default ImageNet's, what torchvision weights
    expect; `remap_jax.model.RetrievalModel` passes its backbone's). Works on numpy and on JAX arrays (the
    arithmetic follows the input's array type).
    """
    if images.shape[-1] != 3:
        raise ValueError(f"images: expected channels-last RGB (..., 3), got shape {tuple(images.shape)}")
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def denormalize(images) -> np.ndarray:
    """Inverse of :func:`normalize` for display: float (..., 3) -> uint8 (..., 3)."""
    x = np.asarray(images, dtype=np.float32) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    """Encodes a uint8 (H, W, 3) image as JPEG bytes."""
    img = _check_image(img)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


class ImageList(Sequence):
    """A lazy sequence of images: item k is ``transform(read(indices[k]))``, read only when indexed.

    What the Extractor takes to describe a dataset without loading it first (it indexes items in its
    decoding threads), e.g. ``ImageList(test_set.read_index, test_set.num_index)``.

    Args:
      read: index -> uint8 (H, W, 3) image (or a path / encoded bytes).
      indices: the dataset indices, in order, or a count n for ``range(n)``.
      transform: optional function applied to each image after reading.
    """

    def __init__(self, read: Callable[[int], np.ndarray], indices: Sequence[int] | int,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None):
        self._read = read
        self.indices = np.arange(indices) if isinstance(indices, (int, np.integer)) else np.asarray(indices)
        self._transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return ImageList(self._read, self.indices[k], self._transform)
        img = self._read(int(self.indices[k]))
        return img if self._transform is None else self._transform(img)
