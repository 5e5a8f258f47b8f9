"""Checks on what clients send: uploaded images, query boxes, `k`. Bytes in, uint8 (H, W, 3) arrays out.

Every refusal is an `UploadError` carrying the HTTP status, a short machine-readable `code` and a one-line
message naming the input, what was wrong and what was expected; the app turns it into a JSON error. The
checks run in this order, so a hostile file is refused before its pixels are decoded:

1. empty body (400 `empty_file`);
2. the header, read by Pillow without decoding pixels: not an image (400 `not_an_image`), a format outside
   `FORMATS` (415 `unsupported_format`), more than `max_pixels` pixels (400 `too_many_pixels`; the default is
   far below Pillow's own `MAX_IMAGE_PIXELS`, whose check only warns below twice that);
3. the decode itself (`remap_jax.data.images.load_rgb`): truncated or corrupt data (400 `undecodable`).

The byte cap is enforced while the body streams, before any of this (`remap_jax.serve.limits`).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

from remap_jax.data.images import ImageDecodeError, load_rgb

__all__ = ["FORMATS", "UploadError", "check_header", "decode_image", "parse_box", "parse_k"]

#: Pillow format name -> the media type a client may declare for it: what a photo is.
FORMATS = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
}
#: declared part types accepted besides FORMATS' own: clients that do not know the type send these.
GENERIC_TYPES = ("application/octet-stream", "")
#: other names some clients use for the same formats
ALIASES = ("image/jpg", "image/pjpeg", "image/x-ms-bmp", "image/x-png")


class UploadError(Exception):
    """A request the service refuses: `status` (4xx), `code` (short name) and a one-line `message`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.message = message


def check_declared_type(content_type: str | None, field: str = "image") -> None:
    """Refuses (415) a part whose declared media type is neither an accepted image type nor generic."""
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared in GENERIC_TYPES or declared in FORMATS.values() or declared in ALIASES:
        return
    raise UploadError(415, "unsupported_media_type",
                      f"{field}: declared content type {declared!r}; expected one of "
                      f"{sorted(FORMATS.values())} (or application/octet-stream)")


def check_header(data: bytes, max_pixels: int, field: str = "image") -> tuple[str, int, int]:
    """(format, width, height) of encoded `data`, read from its header only (no pixel decoding).

    Raises UploadError for an empty body, data that is not an image, a format outside FORMATS or more than
    `max_pixels` pixels.
    """
    if not data:
        raise UploadError(400, "empty_file", f"{field}: the file is empty (0 bytes); expected an encoded "
                          f"image ({', '.join(FORMATS)})")
    try:
        with warnings.catch_warnings():
            # Pillow warns (DecompressionBombWarning) or raises above its own limit; ours is lower anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (width, height) = img.format, img.size
    except Image.DecompressionBombError:
        raise UploadError(400, "too_many_pixels", f"{field}: the header declares more pixels than Pillow's "
                          f"limit; expected at most {max_pixels} pixels") from None
    except Exception as e:  # Pillow raises UnidentifiedImageError, SyntaxError, struct.error, ...
        raise UploadError(400, "not_an_image", f"{field}: not a readable image ({len(data)} bytes; "
                          f"{type(e).__name__}); expected {', '.join(FORMATS)}") from None
    if fmt not in FORMATS:
        raise UploadError(415, "unsupported_format",
                          f"{field}: format {fmt}; expected one of {', '.join(FORMATS)}")
    if width < 1 or height < 1 or width * height > max_pixels:
        raise UploadError(400, "too_many_pixels",
                          f"{field}: {width}x{height} = {width * height} pixels; expected at most "
                          f"{max_pixels}")
    return fmt, width, height


def decode_image(data: bytes, max_pixels: int, field: str = "image") -> np.ndarray:
    """Checks `data` (see `check_header`), then decodes it: uint8 (H, W, 3) RGB, EXIF orientation applied
    (what a browser shows). Truncated or corrupt data raises UploadError (400 `undecodable`)."""
    check_header(data, max_pixels, field)
    try:
        return load_rgb(data)
    except ImageDecodeError as e:
        raise UploadError(400, "undecodable", f"{field}: cannot decode the image data ({e.__cause__ or e})"
                          ) from None


def parse_box(text: str | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    """`"x0,y0,x1,y1"` in pixels of the (EXIF-rotated) image, x1/y1 exclusive -> ints, or None if absent.

    Refused (400 `bad_box`): not four numbers, and a box that is empty or reaches outside the
    `width` x `height` image.
    """
    if text is None or not text.strip():
        return None
    parts = text.replace(" ", ",").split(",")
    try:
        values = [float(v) for v in parts if v]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise UploadError(400, "bad_box", f"box: {text[:60]!r}; expected four numbers x0,y0,x1,y1")
    x0, y0, x1, y1 = (int(round(v)) for v in values)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise UploadError(400, "bad_box", f"box: ({x0}, {y0}, {x1}, {y1}) is empty or outside the "
                          f"{width}x{height} image; expected 0 <= x0 < x1 <= {width}, "
                          f"0 <= y0 < y1 <= {height}")
    return x0, y0, x1, y1


def parse_k(text: str | None, default: int, limit: int) -> int:
    """The number of results asked for: an integer in 1..limit (400 `bad_k` otherwise)."""
    if text is None or str(text).strip() == "":
        return min(default, limit)
    try:
        k = int(str(text).strip())
    except ValueError:
        k = 0
    if not 1 <= k <= limit:
        raise UploadError(400, "bad_k", f"k: {str(text)[:20]!r}; expected an integer from 1 to {limit}")
    return k


def parse_choice(text: str | None, name: str, choices: Sequence[str], default: str) -> str:
    """A value out of `choices` (400 `bad_<name>` otherwise)."""
    value = default if text is None or not str(text).strip() else str(text).strip()
    if value not in choices:
        raise UploadError(400, f"bad_{name}", f"{name}: {value[:40]!r}; expected one of {list(choices)}")
    return value
