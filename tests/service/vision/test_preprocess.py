"""Decoding: every bad input is refused with its own code, before its pixels are decoded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.errors import KilnError
from service.vision.preprocess import ImageLimits, decode_image
from tests.service.vision.images import BAD, encode, scene_png

LIMITS = ImageLimits(max_pixels=4_000_000, max_side=8192)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_inputs(name: str) -> None:
    data, status, code = BAD[name]
    with pytest.raises(KilnError) as err:
        decode_image(data, LIMITS, index=3)
    assert (err.value.http_status, err.value.code) == (status, code)
    assert "image 3" in err.value.message


def test_good_images_in_every_accepted_format_decode_to_rgb() -> None:
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 4), dtype=np.uint8), "RGBA")
    for fmt, img in [("PNG", rgba), ("JPEG", rgba.convert("RGB")), ("BMP", rgba.convert("RGB")), ("GIF", rgba)]:
        out = decode_image(encode(img, fmt), LIMITS)
        assert out.mode == "RGB" and out.size == (30, 20), fmt


def test_limits_are_settings() -> None:
    data = scene_png(size=(200, 100))
    assert decode_image(data, LIMITS).size == (200, 100)
    with pytest.raises(KilnError, match="KILN_MAX_IMAGE_PIXELS"):
        decode_image(data, ImageLimits(max_pixels=19_999))
    with pytest.raises(KilnError, match="KILN_MAX_IMAGE_SIDE"):
        decode_image(data, ImageLimits(max_side=150))
    with pytest.raises(KilnError) as err:
        decode_image(data, ImageLimits(formats=frozenset({"JPEG"})))
    assert err.value.http_status == 415
