"""views.onnx on ONNX Runtime gives exactly the views of the Pillow pipeline, and the gateway uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from contracts.vision import make_views
from export.verify import VerificationError
from export.vision.train import demo_contract
from export.vision.views_graph import build_views_graph, export_views_graph, verify_views_graph
from service.vision.views import ViewsGraph


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_views_graph(demo_contract(32), tmp_path_factory.mktemp("views") / "views.onnx")


def test_export_verification_passes_and_covers_both_pass_orders(graph: Path) -> None:
    report = verify_views_graph(graph, demo_contract(32))
    assert report["passed"] and report["max_abs"] == 0.0
    assert report["vertical_first_plans"] > 0 and report["views_checked"] > 300


def test_service_views_equal_pillow_views_for_scenes_and_odd_sizes(graph: Path) -> None:
    c = demo_contract(32)
    runner = ViewsGraph(graph, c)
    rng = np.random.default_rng(3)
    for w, h in ((128, 128), (96, 160), (31, 7), (500, 90)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for mode, grid, overlap, flip in (
            ("multi", 3, 0.25, True),
            ("single", 3, 0.25, False),
            ("multi", 5, 0.4, False),
        ):
            names, views = runner.views(img, mode, grid, overlap, flip)
            want_names, want = make_views(img, c, mode, grid, overlap, flip)
            assert names == want_names and views.dtype == np.float32
            assert np.abs(views - want).max() <= 1e-5  # in fact identical
            assert np.array_equal(views, want)
    assert runner.plan.cache_info().currsize == 12


def test_large_images_fall_back_to_pillow(graph: Path) -> None:
    runner = ViewsGraph(graph, demo_contract(32), max_elements=100_000)
    img = Image.fromarray(np.zeros((300, 300, 3), np.uint8))
    assert runner.views(img, "multi", 3, 0.25, True) is None


def test_a_wrong_graph_fails_verification(tmp_path: Path) -> None:
    c = demo_contract(32)
    model = build_views_graph(c)
    for node in model.graph.node:  # mis-round: shift by 21 bits instead of 22
        if node.op_type == "Constant" and node.output[0] == "one":
            node.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(np.array(1 << 21, np.int32), "one"))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(VerificationError, match="differ from Pillow"):
        verify_views_graph(tmp_path / "bad.onnx", c)


def test_nearest_resize_is_left_to_pillow(graph: Path) -> None:
    c = demo_contract(32)
    nearest = type(c)(c.input_size, c.mean, c.std, "nearest", c.labels)
    with pytest.raises(ValueError, match="no in-graph views"):
        ViewsGraph(graph, nearest)
