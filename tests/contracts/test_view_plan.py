"""The view plan reproduces Pillow's resampling bit for bit (numpy reference of the graph)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from contracts.view_plan import pillow_vertical_first, resample_coeffs, view_plan, views_uint8
from contracts.vision import PreprocessContract, crop_resize, make_views, normalize


def contract(resize: str = "bilinear", size: tuple[int, int] = (16, 16)) -> PreprocessContract:
    return PreprocessContract(size, (0.2, 0.3, 0.4), (0.1, 0.2, 0.3), resize, tuple("abc"))


@pytest.mark.parametrize("resize", ["bilinear", "bicubic"])
def test_random_images_boxes_and_options_match_pillow_exactly(resize: str) -> None:
    rng = np.random.default_rng(0)
    for trial in range(40):
        w, h = (int(x) for x in rng.integers(1, 300, size=2))
        c = contract(resize, (int(rng.integers(8, 40)), int(rng.integers(8, 40))))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mode = ("single", "multi")[trial % 2]
        grid, overlap, flip = int(rng.integers(1, 5)), float(rng.choice([0.0, 0.25, 0.5])), bool(trial % 3)
        names, want = make_views(Image.fromarray(pixels), c, mode, grid, overlap, flip)
        plan = view_plan(w, h, c, mode, grid, overlap, flip)
        assert list(plan.names) == names
        assert np.array_equal(normalize(views_uint8(pixels, plan), c), want), (w, h, c.input_size, mode)


def test_both_pass_orders_are_exercised_and_match() -> None:
    c = contract()
    rng = np.random.default_rng(1)
    orders = set()
    for w, h in ((200, 40), (40, 200), (128, 128), (17, 300)):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        plan = view_plan(w, h, c, "multi", 3, 0.25, True)
        orders.add(plan.vertical_first)
        assert np.array_equal(
            normalize(views_uint8(pixels, plan), c), make_views(Image.fromarray(pixels), c, "multi", 3, 0.25, True)[1]
        )
    assert orders == {True, False} or not pillow_vertical_first(40, 200, 16, 16)


def test_coefficients_are_pillows_fixed_point_weights() -> None:
    # Downscaling 8 -> 4 with a triangle filter of support 2: weights 1/8, 3/8, 3/8, 1/8 in 22-bit fixed point.
    starts, k = resample_coeffs(8, 0.0, 8.0, 4, "bilinear")
    assert starts == [0, 1, 3, 5]
    assert k[1, :4].tolist() == [524288, 1572864, 1572864, 524288]
    assert k.sum(axis=1) == pytest.approx([1 << 22] * 4, abs=2)
    # One plan pixel against Pillow directly, for a fractional box.
    img = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8).repeat(3).reshape(8, 8, 3))
    c = contract(size=(3, 3))
    got = views_uint8(np.asarray(img), view_plan(8, 8, c, "single"))
    assert np.array_equal(got[0], crop_resize(img, (0.0, 0.0, 8.0, 8.0), (3, 3)))


def test_nearest_has_no_plan() -> None:
    with pytest.raises(ValueError, match="no in-graph plan"):
        resample_coeffs(10, 0, 10, 5, "nearest")
