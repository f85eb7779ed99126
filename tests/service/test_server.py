"""The real server: a uvicorn subprocess, real sockets, real signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.live_server import Server

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tiny_lm_repo):  # type: ignore[no-untyped-def]
    srv = Server(tiny_lm_repo, KILN_MAX_BATCH="2", KILN_MAX_SEQ_LEN="256", KILN_FAULT_STEP_DELAY_MS="20")
    yield srv
    srv.stop()


def test_disconnect_mid_stream_frees_the_slot(server: Server) -> None:
    body = {"prompt": "def fib(n):", "max_new_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{server.url}/generate", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data:")
            assert server.metric("kiln_kv_slots_in_use") == 1
        # Leaving the block closed the connection after one chunk.
    deadline = time.monotonic() + 5
    while server.metric("kiln_kv_slots_in_use") != 0:
        assert time.monotonic() < deadline, "slot still held after disconnect"
        time.sleep(0.02)
    # Cancelled long before 200 tokens (20 ms per step would take 4 s).
    assert server.metric("kiln_generation_tokens_total") < 100


def test_sigterm_drains_in_flight_requests_then_exits_zero(server: Server) -> None:
    results: list[dict] = []

    def call() -> None:
        r = httpx.post(
            f"{server.url}/generate",
            json={"prompt": "import os", "max_new_tokens": 40, "ignore_eos": True, "temperature": 0},
            timeout=60,
        )
        results.append({"status": r.status_code, **r.json()})

    threads = [threading.Thread(target=call) for _ in range(4)]  # 2 running + 2 queued
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    # All four accepted before the signal: two decoding, two waiting in the queue.
    while server.metric("kiln_kv_slots_in_use") + server.metric("kiln_queue_depth") < 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx.get(f"{server.url}/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["draining"] is True
    refused = httpx.post(f"{server.url}/generate", json={"prompt": "x"}, timeout=5)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
    for t in threads:
        t.join(60)
    assert server.proc.wait(30) == 0
    assert len(results) == 4
    assert all(r["status"] == 200 and r["finish_reason"] == "length" for r in results), results
    assert all(r["usage"]["completion_tokens"] == 40 for r in results)


def test_full_queue_answers_429_with_retry_after(tiny_lm_repo) -> None:
    srv = Server(tiny_lm_repo, KILN_MAX_BATCH="1", KILN_MAX_QUEUE="1", KILN_FAULT_STEP_DELAY_MS="20")
    try:
        body = {"prompt": "x", "max_new_tokens": 100, "ignore_eos": True}
        threads = [
            threading.Thread(target=httpx.post, args=(f"{srv.url}/generate",), kwargs={"json": body, "timeout": 60})
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while srv.metric("kiln_queue_depth") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        r = httpx.post(f"{srv.url}/generate", json=body, timeout=10)
        assert time.monotonic() - started < 1.0  # at once, not after queueing
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        assert srv.metric('kiln_rejected_requests_total{model="tiny-lm",reason="queue_full"}') == 1
        for t in threads:
            t.join(60)
    finally:
        srv.stop()


def test_the_service_never_imports_torch(tiny_lm_repo) -> None:
    code = f"""
import sys, time
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
with TestClient(create_app(Settings(model_repository={str(tiny_lm_repo)!r}, grpc_port=0))) as c:
    while c.get('/readyz').status_code != 200:
        time.sleep(0.05)
    r = c.post('/generate', json={{'prompt': 'def', 'max_new_tokens': 4}})
    assert r.status_code == 200, r.text
print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"')) == []
