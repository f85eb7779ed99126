"""Every engine test runs on both graph contracts the runner serves."""

from __future__ import annotations

import pytest

from tests.service.engine import test_engine


@pytest.fixture(autouse=True, params=["fused", "fp32"])
def graph_variant(request):  # type: ignore[no-untyped-def]
    test_engine.GRAPH["variant"] = request.param
    yield request.param
    test_engine.GRAPH["variant"] = "fused"
