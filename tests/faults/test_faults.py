"""Faults: broken models at start-up, slow readers."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready
from tests.live_server import Server


@pytest.fixture(scope="module")
def repo_with_broken_models(tiny_lm_repo, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("broken") / "repo"
    shutil.copytree(tiny_lm_repo / "tiny-lm", root / "tiny-lm")
    for name in ("corrupt-lm", "missing-lm"):
        shutil.copytree(tiny_lm_repo / "tiny-lm", root / name)
        manifest = json.loads((root / name / "kiln.json").read_text())
        manifest["name"] = name
        (root / name / "kiln.json").write_text(json.dumps(manifest))
    for graph in ("model.onnx", "model.fused.onnx"):  # whichever KILN_LM_VARIANT picks
        (root / "corrupt-lm/1" / graph).write_bytes(b"\x08\x07not an onnx graph" * 100)
        (root / "missing-lm/1" / graph).unlink()
    return root


def test_broken_models_are_not_ready_and_the_good_one_is_served(repo_with_broken_models, caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.ERROR, logger="kiln.registry"):
        with TestClient(create_app(Settings(model_repository=repo_with_broken_models, grpc_port=0))) as c:
            wait_ready(c)
            ready = c.get("/readyz").json()
            assert ready["models"] == {"tiny-lm": "ready"}
            assert set(ready["failed"]) == {"corrupt-lm", "missing-lm"}
            assert c.get("/readyz", params={"model": "tiny-lm"}).status_code == 200
            one = c.get("/readyz", params={"model": "corrupt-lm"})
            assert one.status_code == 503 and one.json()["state"] == "failed"
            assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["tiny-lm"]
            r = c.post("/generate", json={"model": "missing-lm", "prompt": "x"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
            assert c.post("/generate", json={"model": "tiny-lm", "prompt": "x", "max_new_tokens": 2}).status_code == 200
            metrics = c.get("/metrics").text
            assert 'kiln_model_ready{model="corrupt-lm"} 0.0' in metrics
            assert 'kiln_model_ready{model="tiny-lm"} 1.0' in metrics
    logged = caplog.text
    assert "corrupt-lm failed to load" in logged and "missing-lm failed to load" in logged
    assert "missing-lm/1/model.fused.onnx" in logged  # the log says which file


@pytest.mark.slow
def test_a_slow_reader_neither_blocks_others_nor_loses_tokens(tiny_lm_repo) -> None:  # type: ignore[no-untyped-def]
    srv = Server(tiny_lm_repo, KILN_MAX_BATCH="2", KILN_GRPC_PORT="0")
    try:
        body = json.dumps({"prompt": "def", "max_new_tokens": 200, "ignore_eos": True, "stream": True}).encode()
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            b"POST /generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(0.5)  # the slow client reads nothing yet
        started = time.monotonic()
        r = httpx.post(f"{srv.url}/generate", json={"prompt": "x", "max_new_tokens": 8}, timeout=10)
        assert r.status_code == 200 and time.monotonic() - started < 5
        # Now read everything, slowly: all 200 tokens arrive and the stream ends properly.
        data = b""
        sock.settimeout(30)
        while not data.rstrip().endswith(b"0\r\n\r\n"):
            chunk = sock.recv(512)
            if not chunk:
                break
            data += chunk
            time.sleep(0.001)
        sock.close()
        finish = [ln for ln in data.split(b"\n") if b'"finish_reason"' in ln]
        assert finish and json.loads(finish[-1].split(b"data:", 1)[1])["usage"]["completion_tokens"] == 200
        assert srv.metric('kiln_kv_slots_in_use{model="tiny-lm"}') == 0
    finally:
        srv.stop()
