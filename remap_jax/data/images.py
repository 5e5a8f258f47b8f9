"""Image decoding and geometry helpers: uint8 (H, W, 3) RGB arrays in, arrays out.

Every loader in the project goes through :func:`load_rgb`, so all of them agree on how odd files are
handled: grayscale and 16-bit images become RGB, CMYK is converted, palette and alpha images are composited
on white, and the EXIF orientation tag is applied. A file that cannot be decoded raises
:class:`ImageDecodeError` naming the file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageDecodeError",
    "ImageList",
    "crop_bbox",
    "denormalize",
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
    try:
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            if len(path_or_bytes) == 0:
                raise ImageDecodeError(f"image {name}: empty byte string, expected an encoded image")
            stream = io.BytesIO(bytes(path_or_bytes))
        elif isinstance(path_or_bytes, (str, os.PathLike)):
            if not os.path.exists(path_or_bytes):
                raise ImageDecodeError(f"image {name}: file not found")
            if os.path.getsize(path_or_bytes) == 0:
                raise ImageDecodeError(f"image {name}: file is empty, expected an encoded image")
            stream = path_or_bytes
        elif hasattr(path_or_bytes, "read"):
            stream = path_or_bytes
        else:
            raise ImageDecodeError(
                f"image {name}: expected a path, bytes or a binary file object, got {type(path_or_bytes)}"
            )
        with Image.open(stream) as img:
            img.load()
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
            if img.width == 0 or img.height == 0:
                raise ImageDecodeError(f"image {name}: zero-sized image {img.size}")
            return _to_rgb(img)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as e:
        raise ImageDecodeError(f"image {name}: cannot decode ({type(e).__name__}: {e})") from e


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


def crop_bbox(img: np.ndarray, bbox: Sequence[float]) -> np.ndarray:
    """Crops a uint8 (H, W, 3) image to ``bbox = (x0, y0, x1, y1)`` in pixels (x1, y1 exclusive).

    Coordinates may be floats (the ROxford/RParis ground truth is); they are rounded like PIL's ``crop`` and
    clipped to the image. Raises ValueError when the clipped box is empty.
    """
    img = _check_image(img)
    if len(bbox) != 4:
        raise ValueError(f"bbox: expected (x0, y0, x1, y1), got {tuple(bbox)}")
    h, w = img.shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in bbox)
    cx0, cy0 = min(max(x0, 0), w), min(max(y0, 0), h)
    cx1, cy1 = min(max(x1, 0), w), min(max(y1, 0), h)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(
            f"bbox: {tuple(bbox)} is empty after clipping to the image of size (H={h}, W={w}); "
            "expected x0 < x1 and y0 < y1 inside the image"
        )
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
