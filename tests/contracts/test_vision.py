"""View geometry and the pixel pipeline shared by training and serving."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from contracts.versions import ContractError
from contracts.vision import PreprocessContract, make_views, normalize, tile_boxes, view_boxes

C = PreprocessContract((16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", tuple("abc"))


def test_tiles_cover_the_image_with_the_requested_overlap() -> None:
    boxes = tile_boxes(120, 90, 3, 0.25)
    assert len(boxes) == 9
    assert boxes[0][:2] == (0, 0) and boxes[-1][2:] == pytest.approx((120, 90))
    w = boxes[0][2] - boxes[0][0]
    assert w == pytest.approx(120 / 2.5)
    # Neighbours share a quarter of a tile.
    assert boxes[0][2] - boxes[1][0] == pytest.approx(0.25 * w)
    assert tile_boxes(100, 100, 1, 0.0) == [(0, 0, 100, 100)]


def test_view_names_and_counts() -> None:
    assert [n for n, _ in view_boxes(64, 64, "single")] == ["global"]
    names = [n for n, _ in view_boxes(64, 64, "multi", grid=2)]
    assert names == ["global", "tile_0_0", "tile_0_1", "tile_1_0", "tile_1_1"]
    with pytest.raises(ValueError):
        view_boxes(64, 64, "panorama")


def test_make_views_multi_flip_is_20_views_with_mirrors() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    names, x = make_views(img, C, "multi", 3, 0.25, flip=True)
    assert x.shape == (20, 3, 16, 16) and x.dtype == np.float32
    assert names[:4] == ["global", "global:flip", "tile_0_0", "tile_0_0:flip"]
    assert np.array_equal(x[1], x[0][:, :, ::-1])  # the flip mirrors the width axis


def test_normalize_applies_scale_mean_std_and_channels_first() -> None:
    px = np.full((2, 4, 4, 3), 255, np.uint8)
    px[..., 1] = 0
    x = normalize(px, C)
    assert x.shape == (2, 3, 4, 4)
    assert np.allclose(x[:, 0], 2.0) and np.allclose(x[:, 1], -2.0)


def test_a_tile_sees_a_small_object_the_global_view_shrinks() -> None:
    img = np.zeros((128, 128, 3), np.uint8)
    img[10:22, 10:22] = 255  # a 12-pixel square in the top-left tile
    names, x = make_views(Image.fromarray(img), C, "multi", 3, 0.25)
    peak = {n: float(v[0].max()) for n, v in zip(names, x, strict=True)}
    assert peak["tile_0_0"] == pytest.approx(2.0)  # full white survives in the tile
    assert -2.0 < peak["global"] < 1.0  # smeared into the background by the 8× downscale
    assert peak["tile_2_2"] == pytest.approx(-2.0)  # nothing there


def test_preprocess_contract_round_trips_and_refuses_an_unknown_version() -> None:
    data = C.to_dict()
    assert data["contract_version"] == 1
    assert PreprocessContract.from_dict(data) == C
    legacy = {k: v for k, v in data.items() if k != "contract_version"}  # written before versions: v1
    assert PreprocessContract.from_dict(legacy) == C
    with pytest.raises(ContractError, match="contract_version 2.*re-export"):
        PreprocessContract.from_dict({**data, "contract_version": 2})
