"""Property-based tests (hypothesis): sampling never leaves its allowed set, and no request
body, however odd, gets a 5xx or hangs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.engine.sampling import SamplingParams, allowed_mask, apply_repetition_penalty, sample_token
from service.settings import Settings
from tests.conftest import wait_ready


@st.composite
def logits_and_params(draw):  # type: ignore[no-untyped-def]
    vocab = draw(st.integers(1, 64))
    logits = np.array(draw(st.lists(st.floats(-50, 50), min_size=vocab, max_size=vocab)))
    params = SamplingParams(
        temperature=draw(st.one_of(st.just(0.0), st.floats(0.0, 5.0), st.floats(1e-320, 1e-3))),
        top_k=draw(st.integers(0, vocab + 3)),
        top_p=draw(st.floats(1e-6, 1.0)),
        repetition_penalty=draw(st.floats(0.01, 10.0)),
        seed=draw(st.integers(0, 2**32)),
    )
    seen = np.unique(np.array(draw(st.lists(st.integers(0, vocab - 1), max_size=8)), dtype=np.int64))
    return logits, params, seen


@given(logits_and_params())
@settings(max_examples=300, deadline=None)
def test_sampled_token_is_always_in_the_allowed_set(case) -> None:  # type: ignore[no-untyped-def]
    logits, params, seen = case
    token = sample_token(logits, params, np.random.default_rng(params.seed), seen)
    penalized = apply_repetition_penalty(logits.astype(np.float64), seen, params.repetition_penalty)
    assert 0 <= token < logits.shape[0]
    if params.greedy:
        assert penalized[token] == penalized.max()
    else:
        keep = allowed_mask(penalized / params.temperature, params.top_k, params.top_p)
        assert keep[token]
        if 0 < params.top_k < logits.shape[0]:
            assert keep.sum() >= 1 and penalized[token] >= np.sort(penalized)[-params.top_k]


@pytest.fixture(scope="module")
def client(tiny_lm_repo):  # type: ignore[no-untyped-def]
    s = Settings(model_repository=tiny_lm_repo, grpc_port=0, max_new_tokens_limit=8, max_body_bytes=8192)
    with TestClient(create_app(s)) as c:
        wait_ready(c)
        yield c


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
GENERATE_FIELDS = [
    "model",
    "prompt",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "stop",
    "seed",
    "stream",
    "timeout_s",
    "ignore_eos",
    "logprobs",
]
COMPLETION_FIELDS = [
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "n",
    "logprobs",
    "stream",
    "echo",
    "best_of",
    "user",
]


def bodies(fields: list[str]):  # type: ignore[no-untyped-def]
    return st.dictionaries(st.sampled_from(fields) | st.text(max_size=6), JSON_VALUES, max_size=6)


@given(route=st.sampled_from(["/generate", "/v1/completions"]), body=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_body_gets_a_server_error(client: TestClient, route: str, body) -> None:  # type: ignore[no-untyped-def]
    payload = body.draw(bodies(GENERATE_FIELDS if route == "/generate" else COMPLETION_FIELDS))
    r = client.post(route, content=json.dumps(payload), headers={"content-type": "application/json"})
    assert r.status_code < 500 or r.status_code == 503, (payload, r.status_code, r.text)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["code"] and error["message"]


@given(raw=st.binary(max_size=200))
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_arbitrary_bytes_are_a_400_not_a_crash(client: TestClient, raw: bytes) -> None:
    r = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400), (raw, r.status_code, r.text)
