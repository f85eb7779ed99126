"""Decoding uploaded images safely: format allow-list, pixel and side limits, truncation.

Pillow reads only the header in `Image.open`, so every size check runs before the pixels are
decoded: a decompression bomb is refused without allocating its pixels.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.errors import InvalidRequest, KilnError, PayloadTooLarge


class UnsupportedMediaType(KilnError):
    code = "unsupported_format"
    http_status = 415


@dataclass(frozen=True)
class ImageLimits:
    formats: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})
    max_pixels: int = 40_000_000
    max_side: int = 16_384
    max_aspect: float = 64.0


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, without decoding anything."""
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def decode_image(data: bytes, limits: ImageLimits, index: int = 0) -> Image.Image:
    """Bytes → a fully decoded RGB Pillow image, or a KilnError naming the problem."""
    where = f"image {index}"
    if not data:
        raise InvalidRequest(f"{where} is empty", code="not_an_image")
    header = _png_size(data)
    if header is not None and 0 in header:
        # Pillow refuses such files as "unidentified"; say what is actually wrong.
        raise InvalidRequest(f"{where} has zero size ({header[0]}x{header[1]})", code="invalid_dimensions")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InvalidRequest(f"{where} is not a recognizable image", code="not_an_image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"{where}: {exc}", code="decompression_bomb") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidRequest(f"{where} has a corrupt header: {exc}", code="corrupt_image") from exc
    fmt = (img.format or "").upper()
    if fmt not in limits.formats:
        raise UnsupportedMediaType(
            f"{where}: format {fmt or 'unknown'} is not accepted; use one of {sorted(limits.formats)}"
        )
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InvalidRequest(f"{where} has zero size ({w}x{h})", code="invalid_dimensions")
    if w > limits.max_side or h > limits.max_side or max(w, h) / min(w, h) > limits.max_aspect:
        raise InvalidRequest(
            f"{where} is {w}x{h}: sides must be <= {limits.max_side} (KILN_MAX_IMAGE_SIDE) with aspect "
            f"ratio <= {limits.max_aspect:g}",
            code="invalid_dimensions",
        )
    if w * h > limits.max_pixels:
        raise PayloadTooLarge(
            f"{where} is {w}x{h} = {w * h} pixels, over the limit {limits.max_pixels} (KILN_MAX_IMAGE_PIXELS)",
            code="decompression_bomb",
        )
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        img.load()
        upright: Image.Image = ImageOps.exif_transpose(img) or img
        return upright.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidRequest(f"{where} is truncated or corrupt: {exc}", code="truncated_image") from exc
