"""Every view of a decoded image in one ONNX Runtime run of the exported views graph.

`views.onnx` (export/vision/views_graph.py) takes the image and a `ViewPlan` (Pillow's
resampling coefficients for each view, contracts/view_plan.py) and returns the same float32
batch as `contracts.vision.make_views`, bit for bit, without a Python loop over views and with
the GIL released while it runs. Plans depend only on the image size and the view options, so
they are cached. Images whose plan would need more than `max_elements` gathered values
(very large images: the graph materialises its taps) take the Pillow path, which gives the
same views.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from contracts.view_plan import GRAPH_FILTERS, ViewPlan, view_plan
from contracts.vision import PreprocessContract
from service.backends.ort_session import cpu_session

MAX_ELEMENTS = 8_000_000  # int32 values (32 MB) per image in flight; a 640×480 image with 3×3 tiles needs ~7.5 M
OUTPUT = "views"


class ViewsGraph:
    def __init__(self, path: Path, contract: PreprocessContract, max_elements: int = MAX_ELEMENTS) -> None:
        if contract.resize not in GRAPH_FILTERS:
            raise ValueError(f"resize {contract.resize!r} has no in-graph views (supported: {list(GRAPH_FILTERS)})")
        self.contract = contract
        self.max_elements = max_elements
        self.session = cpu_session(path, threads=1, spinning=False)  # one per decode worker, in parallel
        self.plan = lru_cache(maxsize=128)(self._plan)

    def _plan(self, width: int, height: int, mode: str, grid: int, overlap: float, flip: bool) -> ViewPlan:
        return view_plan(width, height, self.contract, mode, grid, overlap, flip)

    def views(
        self, image: Image.Image, mode: str, grid: int, overlap: float, flip: bool
    ) -> tuple[list[str], np.ndarray] | None:
        """(names, views [V, 3, H, W]), or None when the image is too large for the graph."""
        plan = self.plan(image.width, image.height, mode, grid, overlap, flip)
        if plan.gathered_elements > self.max_elements:
            return None
        (out,) = self.session.run([OUTPUT], plan.feeds(np.asarray(image)))
        return list(plan.names), out
