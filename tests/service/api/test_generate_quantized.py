"""/generate with KILN_LM_VARIANT=int4: the gateway serves the 4-bit fused graph through the same
fused runner, and its greedy tokens are that graph's own."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.backends.ort_fused import FusedRunner
from service.settings import Settings
from tests.conftest import fused_greedy_by_recompute, wait_ready


@pytest.fixture(scope="module")
def client(tiny_quant_lm_repo):  # type: ignore[no-untyped-def]
    settings = Settings(
        model_repository=tiny_quant_lm_repo, lm_variant="int4", grpc_port=0, max_batch=4, max_seq_len=128
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def test_int4_variant_is_served_by_the_fused_runner(client: TestClient) -> None:
    model = client.app.state.registry.text["tiny-lm"]
    assert model.graph.path.name == "model.int4.onnx" and model.graph.contract == "gqa"
    assert type(model.runner) is FusedRunner


def test_generate_streams_the_int4_graphs_greedy_tokens(client: TestClient) -> None:
    model = client.app.state.registry.text["tiny-lm"]
    prompt = "def fib(n):"
    body = {"prompt": prompt, "max_new_tokens": 12, "temperature": 0, "ignore_eos": True, "stream": True}
    tokens = []
    with client.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and "token" in (data := json.loads(line[6:])):
                tokens.append(data["token"])
    assert tokens == fused_greedy_by_recompute(model.graph.path, model.encode(prompt), 12)
    whole = client.post("/generate", json={**body, "stream": False})
    assert whole.status_code == 200 and whole.json()["usage"]["completion_tokens"] == 12
    assert whole.json()["text"] == model.decode(tokens)
