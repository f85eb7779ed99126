"""Image bytes for tests: valid scenes and every kind of bad input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(img: Image.Image | np.ndarray, fmt: str = "PNG") -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def scene_png(seed: int = 0, size: tuple[int, int] = (128, 128)) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height (pixels never follow)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bomb_png(side: int = 4000) -> bytes:
    """A real decompression bomb: side×side pixels that compress to a few kilobytes."""
    return encode(Image.new("L", (side, side), 0))


BAD = {  # name → (bytes, expected status, expected code)
    "not_an_image": (b"this is not an image at all", 400, "not_an_image"),
    "truncated": (scene_png()[:2000], 400, "truncated_image"),
    "unsupported_format": (encode(Image.new("RGB", (32, 32)), "TIFF"), 415, "unsupported_format"),
    "decompression_bomb": (bomb_png(), 413, "decompression_bomb"),
    "zero_dimensions": (png_header_only(0, 64), 400, "invalid_dimensions"),
    "absurd_dimensions": (png_header_only(100_000, 2), 400, "invalid_dimensions"),
}
