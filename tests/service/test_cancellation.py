"""A client that goes away frees its slot, on every text route, streaming or not, REST or gRPC.

A real `kiln serve` with a slow engine step (so a generation of 200 tokens would take 8 s): each
test starts a request, waits until it holds a slot, goes away, and the slot must be free again
long before the generation could have finished, with far fewer tokens generated than asked.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import grpc
import httpx
import pytest

from service.rpc import kiln_v1_pb2 as pb
from service.rpc import kiln_v1_pb2_grpc as pb_grpc
from tests.live_server import Server

pytestmark = pytest.mark.slow

STEP_MS = 40
TOKENS = 200  # 8 s at 40 ms per step: anything that runs to completion fails the test
FREED_WITHIN_S = 3.0


@pytest.fixture(scope="module")
def server(tiny_lm_repo) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    srv = Server(tiny_lm_repo, KILN_MAX_BATCH="2", KILN_MAX_SEQ_LEN="256", KILN_FAULT_STEP_DELAY_MS=str(STEP_MS))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[pb_grpc.KilnStub]:
    channel = grpc.insecure_channel(server.grpc_target)
    grpc.channel_ready_future(channel).result(timeout=10)
    yield pb_grpc.KilnStub(channel)
    channel.close()


def wait_for(server: Server, slots: int, timeout: float) -> float:
    started = time.monotonic()
    while server.metric("kiln_kv_slots_in_use") != slots:
        assert time.monotonic() - started < timeout, (slots, server.metric("kiln_kv_slots_in_use"))
        time.sleep(0.01)
    return time.monotonic() - started


def check_abandoned(server: Server, leave: Callable[[], None]) -> None:
    """`leave` starts a request, returns once it holds a slot, and goes away."""
    before = server.metric("kiln_generation_tokens_total") if _has_tokens(server) else 0.0
    wait_for(server, 0, 10)
    leave()
    wait_for(server, 0, FREED_WITHIN_S)
    generated = server.metric("kiln_generation_tokens_total") - before
    assert generated < TOKENS / 2, f"{generated} tokens: the abandoned sequence kept running"


def _has_tokens(server: Server) -> bool:
    try:
        server.metric("kiln_generation_tokens_total")
        return True
    except KeyError:
        return False


def raw_post(server: Server, path: str, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    sock.sendall(head.encode() + data)
    return sock


GENERATE = {"prompt": "def", "max_new_tokens": TOKENS, "ignore_eos": True}
COMPLETIONS = {"model": "tiny-lm", "prompt": "def", "max_tokens": TOKENS, "temperature": 0}


@pytest.mark.parametrize(
    ("path", "body"),
    [("/generate", GENERATE), ("/v1/completions", COMPLETIONS), ("/v1/completions", {**COMPLETIONS, "n": 2})],
)
def test_non_streaming_http(server: Server, path: str, body: dict) -> None:
    def leave() -> None:
        sock = raw_post(server, path, body)
        wait_for(server, body.get("n", 1), 10)
        sock.close()

    check_abandoned(server, leave)


@pytest.mark.parametrize(("path", "body"), [("/generate", GENERATE), ("/v1/completions", COMPLETIONS)])
def test_streaming_http(server: Server, path: str, body: dict) -> None:
    def leave() -> None:
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", server.url + path, json={**body, "stream": True}) as r,
        ):
            assert r.status_code == 200
            lines = r.iter_lines()  # kept open: closing this iterator would close the stream
            assert next(lines).startswith("data:")
            wait_for(server, 1, 10)

    check_abandoned(server, leave)


def test_grpc_generate(server: Server, stub: pb_grpc.KilnStub) -> None:
    def leave() -> None:
        call = stub.Generate.future(pb.GenerateRequest(prompt="def", max_new_tokens=TOKENS, ignore_eos=True))
        wait_for(server, 1, 10)
        assert call.cancel()

    check_abandoned(server, leave)


def test_grpc_generate_stream(server: Server, stub: pb_grpc.KilnStub) -> None:
    def leave() -> None:
        call = stub.GenerateStream(pb.GenerateRequest(prompt="def", max_new_tokens=TOKENS, ignore_eos=True))
        assert next(call).HasField("chunk")
        wait_for(server, 1, 10)
        call.cancel()

    check_abandoned(server, leave)
