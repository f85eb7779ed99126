"""Optional API keys over HTTP (TestClient on the real app) and gRPC (a live server)."""

from __future__ import annotations

import logging

import grpc
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import ApiKeys, parse_entries
from service.rpc import kiln_v1_pb2 as pb
from service.rpc import kiln_v1_pb2_grpc as pb_grpc
from service.settings import Settings
from tests.conftest import wait_ready
from tests.live_server import Server

ALL_KEY = "sk-all-models-0001"
OTHER_KEY = "sk-only-other-0002"
FILE_KEY = "sk-from-the-file-03"
BODY = {"prompt": "def", "max_new_tokens": 2}


@pytest.fixture(scope="module")
def client(tiny_lm_repo, tmp_path_factory):  # type: ignore[no-untyped-def]
    key_file = tmp_path_factory.mktemp("keys") / "keys"
    key_file.write_text(f"# mounted secret\n{FILE_KEY}:tiny-lm   # comment\n\n")
    settings = Settings(
        model_repository=tiny_lm_repo,
        grpc_port=0,
        api_keys=f"{ALL_KEY}, {OTHER_KEY}:other-model",
        api_keys_file=key_file,
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def test_missing_and_wrong_keys_get_401(client: TestClient) -> None:
    r = client.post("/generate", json=BODY)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.post("/generate", json=BODY, headers={"Authorization": "Bearer sk-not-a-real-key"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.json()["error"]["type"] == "authentication_error"
    r = client.get("/v1/models", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


def test_valid_keys_from_env_and_file_and_both_headers(client: TestClient) -> None:
    for headers in ({"Authorization": f"Bearer {ALL_KEY}"}, {"X-API-Key": ALL_KEY}, {"X-API-Key": FILE_KEY}):
        r = client.post("/generate", json=BODY, headers=headers)
        assert r.status_code == 200, (headers, r.text)


def test_a_key_without_the_model_gets_403(client: TestClient) -> None:
    r = client.post("/generate", json=BODY, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_forbidden"
    r = client.post("/v1/completions", json={"model": "tiny-lm", "prompt": "x"}, headers={"X-API-Key": OTHER_KEY})
    assert r.status_code == 403


def test_health_and_metrics_need_no_key(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200
    assert 'route="/generate",status="401"' in client.get("/metrics").text


def test_keys_never_reach_logs_or_settings_repr(client: TestClient, caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.DEBUG):
        client.post("/generate", json=BODY, headers={"Authorization": f"Bearer {ALL_KEY}"})
        client.post("/generate", json=BODY, headers={"Authorization": "Bearer sk-wrong-key-in-log"})
    text = caplog.text + repr(client.app.state.settings)
    assert ALL_KEY not in text and "sk-wrong-key-in-log" not in text
    assert any(r.name == "kiln.access" for r in caplog.records)


def test_request_id_is_echoed_and_logged(client: TestClient, caplog) -> None:  # type: ignore[no-untyped-def]
    from service.logs import RequestIdFilter

    caplog.handler.addFilter(RequestIdFilter())  # what configure_logging installs on real handlers
    with caplog.at_level(logging.INFO, logger="kiln.access"):
        r = client.get("/healthz", headers={"X-Request-ID": "trace-abc-123"})
    assert r.headers["x-request-id"] == "trace-abc-123"
    access = [rec for rec in caplog.records if rec.name == "kiln.access"]
    assert access and access[-1].request_id == "trace-abc-123"
    assert "GET /healthz 200" in access[-1].getMessage()
    assert client.get("/healthz").headers["x-request-id"] != "trace-abc-123"


def test_short_or_malformed_keys_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="shorter than 8"):
        parse_entries(["abc"])
    keys = ApiKeys(parse_entries(["sk-12345678:a|b", "sk-abcdefgh"]))
    assert keys.authenticate("Bearer sk-12345678", None).models == frozenset({"a", "b"})
    assert keys.authenticate(None, "sk-abcdefgh").models is None


@pytest.mark.slow
def test_grpc_uses_the_same_keys(tiny_lm_repo) -> None:  # type: ignore[no-untyped-def]
    srv = Server(tiny_lm_repo, KILN_API_KEYS=f"{ALL_KEY},{OTHER_KEY}:other-model")
    try:
        channel = grpc.insecure_channel(srv.grpc_target)
        stub = pb_grpc.KilnStub(channel)
        req = pb.GenerateRequest(prompt="def", max_new_tokens=2)
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            list(stub.GenerateStream(req, metadata=[("authorization", f"Bearer {OTHER_KEY}")], timeout=10))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        out = stub.Generate(req, metadata=[("x-api-key", ALL_KEY)], timeout=10)
        assert out.usage.completion_tokens == 2
    finally:
        srv.stop()
