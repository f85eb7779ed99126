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


def test_every_operation_conforms_to_the_live_schema(live) -> None:  # type: ignore[no-untyped-def]
    from hypothesis import given

    api = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    checks = [
        no_unexpected_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    tested = []
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(checks=checks)

        run()
        tested.append(operation.label)
    assert {"POST /generate", "POST /v1/completions", "GET /v1/models", "GET /readyz"} <= set(tested)
