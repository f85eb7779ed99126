"""schemathesis against the live OpenAPI schema of a real `kiln serve`: no 5xx, and every
response matches what the schema declares (status codes, content types, bodies)."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.live_server import Server  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tiny_lm_repo):  # type: ignore[no-untyped-def]
    # Small generation limits keep each fuzzed request cheap; the fuzzer still probes every limit.
    srv = Server(tiny_lm_repo, KILN_MAX_NEW_TOKENS_LIMIT="16", KILN_MAX_QUEUE="64", KILN_GRPC_PORT="0")
    yield srv
    srv.stop()


# 5xx answers Kiln gives on purpose, each with its documented code: a request's own deadline
# (`timeout_s`, however small) ends in 504 `timeout`. Anything else at 5xx is a bug.
DELIBERATE_5XX = {504: {"timeout"}}


@schemathesis.check
def no_unexpected_server_error(ctx, response, case) -> None:  # type: ignore[no-untyped-def]
    if response.status_code < 500:
        return
    code = None
    try:
        code = response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - not Kiln's error body: certainly unexpected
        pass
    if code not in DELIBERATE_5XX.get(response.status_code, set()):
        raise AssertionError(f"unexpected {response.status_code} (code {code!r}): {response.text[:300]}")


CHECKS = [no_unexpected_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_every_operation_conforms_to_the_live_schema(live) -> None:  # type: ignore[no-untyped-def]
    from hypothesis import given

    api = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    tested = []
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(checks=CHECKS)

        run()
        tested.append(operation.label)
    assert {
        "POST /generate",
        "POST /v1/completions",
        "POST /v1/chat/completions",
        "POST /tokenize",
        "POST /detokenize",
        "GET /v1/models",
        "GET /readyz",
    } <= set(tested)


STREAMING_CASES = {
    "/generate": {"prompt": "def f(x):", "max_new_tokens": 4, "stream": True},
    "/v1/completions": {
        "model": "tiny-lm",
        "prompt": ["a", "b"],
        "max_tokens": 3,
        "stream": True,
        "logprobs": 2,
        "stream_options": {"include_usage": True},
    },
    "/v1/chat/completions": {
        "model": "tiny-lm",
        "messages": [{"role": "user", "content": "def f(x):"}],
        "max_tokens": 3,
        "n": 2,
        "stream": True,
        "logprobs": True,
        "top_logprobs": 2,
        "stream_options": {"include_usage": True},
    },
}


@pytest.mark.parametrize("path", sorted(STREAMING_CASES))
def test_every_streamed_event_matches_the_documented_event_schema(live, path: str) -> None:  # type: ignore[no-untyped-def]
    """The fuzzer reaches `stream: true` only by chance; every streamed event is checked here on each run.

    Each SSE event (`{event, data}`) must match the schema, including the JSON inside `data`.
    """
    api = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operation = api["/" + path.lstrip("/")]["POST"]
    response = operation.Case(body=STREAMING_CASES[path], media_type="application/json").call_and_validate(
        checks=CHECKS
    )
    assert response.headers["content-type"][0].startswith("text/event-stream")
    assert response.text.rstrip().endswith("data: [DONE]")
    # The schema is strict enough to fail: an event whose JSON lacks a required key is refused.
    schema = api.raw_schema["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    import jsonschema_rs

    validator = jsonschema_rs.validator_for(schema, validate_formats=True)
    assert validator.is_valid({"event": "message", "data": "[DONE]"})
    assert not validator.is_valid({"event": "message", "data": 7})
    assert not validator.is_valid({"event": "bogus", "data": "[DONE]"})
