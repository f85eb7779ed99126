"""The engine on the weight-only quantized fused graphs (`int8`, `int4`), through the same
`FusedOrtLMRunner`: cached decoding reproduces the graph's own full recompute, and the engine
tests that do not compare against fp32 run unchanged on them."""

from __future__ import annotations

import pytest

from tests.conftest import fused_greedy_by_recompute
from tests.service.engine import test_engine
from tests.service.engine.test_engine import (  # noqa: F401 - collected here, on the quantized graphs
    PROMPT,
    make_engine,
    request,
    test_greedy_is_the_same_alone_and_inside_a_busy_batch,
    test_same_seed_same_sample_in_any_batch,
    test_sequences_join_while_others_decode,
)


@pytest.fixture(autouse=True, params=["int4", "int8"])
def graph_variant(request):  # type: ignore[no-untyped-def]
    """Overrides conftest's fused/fp32 parametrization for this module."""
    test_engine.GRAPH["variant"] = request.param
    yield request.param
    test_engine.GRAPH["variant"] = "fused"


@pytest.fixture
def tiny_lm_repo(tiny_quant_lm_repo):  # type: ignore[no-untyped-def]
    """The imported engine tests take `tiny_lm_repo`: here, the export that has the quantized graphs."""
    return tiny_quant_lm_repo


def test_cached_greedy_equals_the_quantized_graphs_full_recompute(tiny_lm_repo, graph_variant) -> None:
    manifest, _, engine = make_engine(tiny_lm_repo)
    graph = manifest.graph(graph_variant)
    assert graph.path.name == f"model.{graph_variant}.onnx" and graph.contract == "gqa"
    engine.start()
    try:
        req, c = request(PROMPT, 24, ignore_eos=True)
        engine.submit(req)
        tokens, fin = c.wait()
    finally:
        engine.stop()
    assert fin.reason == "length" and fin.completion_tokens == 24
    assert tokens == fused_greedy_by_recompute(graph.path, PROMPT, 24)
