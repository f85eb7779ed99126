"""Structured outputs: every constrained output parses and validates against its schema.

Hypothesis draws random JSON schemas of a bounded kind (every string, number and array has a
bound, so a valid document always fits the token budget) and a random sampling seed; the tiny
random model then generates under the schema through the real app. A schema llguidance cannot
enforce is a 400, answered at once.
"""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready

jsonschema = pytest.importorskip("jsonschema")
NAMES = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)


def leaf() -> st.SearchStrategy[dict]:
    bounded_int = st.tuples(st.integers(-50, 50), st.integers(0, 60)).map(
        lambda t: {"type": "integer", "minimum": t[0], "maximum": t[0] + t[1]}
    )
    string = st.integers(1, 6).map(lambda n: {"type": "string", "maxLength": n})
    enum = st.lists(st.text(alphabet="xyz", min_size=1, max_size=3), min_size=1, max_size=4, unique=True).map(
        lambda values: {"enum": values}
    )
    return st.one_of(bounded_int, string, enum, st.just({"type": "boolean"}), st.just({"type": "null"}))


def value_schema(depth: int) -> st.SearchStrategy[dict]:
    def array(item: dict) -> st.SearchStrategy[dict]:
        return st.integers(0, 3).map(lambda n: {"type": "array", "items": item, "maxItems": n})

    options = [leaf(), leaf().flatmap(array)]
    if depth > 0:
        options.append(object_schema(depth - 1))
    return st.one_of(*options)


def object_schema(depth: int = 1) -> st.SearchStrategy[dict]:
    def build(props: dict[str, dict], required_mask: list[bool]) -> dict:
        names = sorted(props)
        required = [n for n, keep in zip(names, required_mask, strict=False) if keep]
        return {"type": "object", "properties": props, "required": required, "additionalProperties": False}

    props = st.dictionaries(NAMES, value_schema(depth), min_size=1, max_size=3)
    return props.flatmap(lambda p: st.lists(st.booleans(), min_size=len(p), max_size=len(p)).map(lambda m: build(p, m)))


@pytest.fixture(scope="module")
def app_client(chat_repo):  # type: ignore[no-untyped-def]
    with TestClient(create_app(Settings(model_repository=chat_repo, grpc_port=0, max_seq_len=256))) as client:
        wait_ready(client)
        yield client


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=object_schema(), seed=st.integers(0, 10_000))
def test_every_constrained_output_validates(app_client: TestClient, schema: dict, seed: int) -> None:
    body = {
        "model": "tiny-lm",  # 256 positions: room for any document these schemas allow
        "messages": [{"role": "user", "content": "data"}],
        "max_tokens": 200,
        "temperature": 1.0,
        "seed": seed,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
    }
    r = app_client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop", (schema, choice)
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)


def test_a_regex_is_matched_and_generate_takes_response_format(app_client: TestClient) -> None:
    import re

    fmt = {"type": "regex", "regex": "[0-9]{3}-[a-c]{2,4}"}
    for seed in range(3):
        r = app_client.post(
            "/generate",
            json={
                "model": "tiny-lm",
                "prompt": "id:",
                "max_new_tokens": 30,
                "temperature": 1.0,
                "seed": seed,
                "response_format": fmt,
            },
        )
        assert r.status_code == 200, r.text
        assert re.fullmatch(fmt["regex"], r.json()["text"]) and r.json()["finish_reason"] in ("stop", "eos")


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=lookahead)"}}},
        {"type": "object", "uniqueItems": True, "not": {"type": "string"}},
        {"$ref": "https://example.com/remote.json"},
        {"type": "wat"},
    ],
)
def test_a_schema_that_cannot_be_enforced_is_a_prompt_400(app_client: TestClient, schema: dict) -> None:
    started = time.monotonic()
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    r = app_client.post(
        "/v1/chat/completions",
        json={"model": "tiny-qwen", "messages": [{"role": "user", "content": "x"}], "response_format": fmt},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_response_format", r.text
    assert time.monotonic() - started < 5
