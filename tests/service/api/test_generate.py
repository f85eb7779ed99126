"""/generate and friends over real HTTP semantics (FastAPI TestClient on the real app)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready
from tests.sse import generate_events as sse


@pytest.fixture(scope="module")
def client(tiny_lm_repo):  # type: ignore[no-untyped-def]
    settings = Settings(model_repository=tiny_lm_repo, grpc_port=0, max_batch=4, max_seq_len=128, max_body_bytes=4096)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def test_generate_returns_text_usage_and_timings(client: TestClient) -> None:
    r = client.post("/generate", json={"prompt": "def fib(n):", "max_new_tokens": 12, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["finish_reason"] in ("length", "eos")
    assert body["usage"]["completion_tokens"] <= 12
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body["timings"]["total_ms"] >= body["timings"]["ttft_ms"] > 0
    assert r.headers["x-request-id"]


def test_stream_equals_non_stream_for_greedy(client: TestClient) -> None:
    req = {"prompt": "class Point:", "max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
    whole = client.post("/generate", json=req).json()
    chunks, final = sse(client, req)
    assert "".join(c["text"] for c in chunks) == whole["text"]
    assert final["finish_reason"] == "length"
    assert final["usage"] == whole["usage"]


def test_seed_reproduces_a_sample(client: TestClient) -> None:
    req = {
        "prompt": "import os",
        "max_new_tokens": 16,
        "temperature": 1.0,
        "top_p": 0.95,
        "seed": 7,
        "ignore_eos": True,
    }
    a = client.post("/generate", json=req).json()["text"]
    b = client.post("/generate", json=req).json()["text"]
    assert a == b


def test_stop_string_ends_the_text(client: TestClient) -> None:
    req = {"prompt": "def fib(n):", "max_new_tokens": 30, "temperature": 0, "ignore_eos": True}
    full = client.post("/generate", json=req).json()["text"]
    assert len(full) > 4
    stop = full[2:4]
    cut = client.post("/generate", json={**req, "stop": [stop]}).json()
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full[: full.index(stop)]
    chunks, final = sse(client, {**req, "stop": [stop]})
    assert "".join(c["text"] for c in chunks) == cut["text"] and final["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"prompt": ""}, 400, "empty_prompt"),
        ({"prompt": "x", "max_new_tokens": 0}, 400, "invalid_parameter"),
        ({"prompt": "x", "max_new_tokens": 5000}, 400, "max_new_tokens_too_large"),
        ({"prompt": "x", "temperature": -0.1}, 400, "invalid_parameter"),
        ({"prompt": "x", "top_p": 1.5}, 400, "invalid_parameter"),
        ({"prompt": "x", "top_k": 10**6}, 400, "invalid_request"),
        ({"prompt": "x", "repetition_penalty": 0}, 400, "invalid_parameter"),
        ({"prompt": "x", "stop": [""]}, 400, "invalid_stop"),
        ({"prompt": "x", "frobnicate": True}, 400, "unknown_parameter"),
        ({"prompt": 42}, 400, "invalid_parameter"),
        ({}, 400, "invalid_parameter"),
        ({"prompt": "word " * 200, "max_new_tokens": 64}, 400, "prompt_too_long"),
        ({"prompt": "x", "model": "no-such-model"}, 404, "model_not_found"),
    ],
)
def test_bad_input_gets_a_structured_4xx(client: TestClient, body: dict, status: int, code: str) -> None:
    r = client.post("/generate", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]


def test_prompt_too_long_names_the_limit(client: TestClient) -> None:
    err = client.post("/generate", json={"prompt": "word " * 200, "max_new_tokens": 64}).json()["error"]
    assert "128" in err["message"] and "max_new_tokens" in err["message"]


def test_malformed_json_and_oversized_body(client: TestClient) -> None:
    r = client.post("/generate", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = client.post("/generate", json={"prompt": "x" * 5000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert "KILN_MAX_BODY_BYTES" in r.json()["error"]["message"]
    r = client.post("/generate", json={"prompt": "x"}, headers={"x-padding": "p" * 20_000})
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"


def test_models_health_and_readiness(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny-lm"]
    assert models["data"][0]["context_length"] == 128
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["models"] == {"tiny-lm": "ready"}


def test_metrics_count_requests_tokens_and_latency(client: TestClient) -> None:
    client.post("/generate", json={"prompt": "hello", "max_new_tokens": 5, "temperature": 0, "ignore_eos": True})
    client.post("/generate", json={"prompt": ""})
    text = client.get("/metrics").text
    for name in (
        'kiln_requests_total{protocol="http",route="/generate",status="200",task="text-generation"}',
        'kiln_requests_total{protocol="http",route="/generate",status="400",task="text-generation"}',
        "kiln_request_duration_seconds_bucket",
        "kiln_time_to_first_token_seconds_bucket",
        "kiln_inter_token_latency_seconds_bucket",
        'kiln_prompt_tokens_total{model="tiny-lm",protocol="http"}',
        'kiln_generation_tokens_total{model="tiny-lm",protocol="http"}',
        "kiln_requests_in_flight",
        "kiln_queue_depth",
        "kiln_kv_slots_in_use",
        "kiln_batch_size_bucket",
    ):
        assert name in text, name
    gen = [ln for ln in text.splitlines() if ln.startswith('kiln_generation_tokens_total{model="tiny-lm"')]
    assert float(gen[0].split()[-1]) >= 5


def test_unknown_route_is_a_json_404_not_a_500(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404


def test_a_repeated_prompt_reports_its_cached_prefix(client: TestClient) -> None:
    req = {"prompt": "import os\nimport sys\n" * 3, "max_new_tokens": 3, "temperature": 0}
    first = client.post("/generate", json=req).json()
    second = client.post("/generate", json=req).json()
    assert second["text"] == first["text"]
    assert second["timings"]["cached_tokens"] == second["usage"]["prompt_tokens"] - 1
