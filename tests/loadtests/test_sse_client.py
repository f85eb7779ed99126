"""The benchmarks' lean SSE client against a real socket server: chunked and plain bodies, events
split across chunks or packed several to a chunk, and a non-200 answer. The end-to-end check
against Kiln itself is bench_generate's quick run (tests/loadtests/test_bench_generate.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from loadtests.sse_client import HTTPStatusError, sse_post

EVENTS = (
    b'data: {"token": 5, "text": "a"}\n\n'
    b'data: {"token": 6,\ndata:  "text": "b"}\n\n'  # one event, two data lines
    b'event: finish\ndata: {"n": 2}\n\n'
)


def chunked(body: bytes, cuts: list[int]) -> bytes:
    pieces, start = [], 0
    for end in [*cuts, len(body)]:
        piece = body[start:end]
        pieces.append(b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n")
        start = end
    return b"".join(pieces) + b"0\r\n\r\n"


async def collect(response: bytes) -> tuple[list[tuple[str, bytes]], dict]:
    seen: dict = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
        seen["head"], seen["body"] = head, json.loads(await reader.readexactly(length))
        for i in range(0, len(response), 7):  # a few bytes per write: every boundary lands mid-read
            writer.write(response[i : i + 7])
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        events = [e async for e in sse_post(f"http://127.0.0.1:{port}", "/generate", {"prompt": "hi"})]
    finally:
        server.close()
    return events, seen


WANT = [("", b'{"token": 5, "text": "a"}'), ("", b'{"token": 6,\n "text": "b"}'), ("finish", b'{"n": 2}')]


@pytest.mark.parametrize("cuts", [[], [3, 40, 41], [len(EVENTS) // 2]])
def test_chunked_events_arrive_whole_wherever_the_chunks_cut_them(cuts: list[int]) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    events, seen = asyncio.run(collect(head + chunked(EVENTS, cuts)))
    assert events == WANT
    assert seen["body"] == {"prompt": "hi"} and seen["head"].startswith(b"POST /generate HTTP/1.1\r\n")


def test_a_body_without_chunked_encoding_is_read_to_the_end() -> None:
    events, _ = asyncio.run(collect(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + EVENTS))
    assert events == WANT


def test_a_status_other_than_200_raises_with_the_body() -> None:
    with pytest.raises(HTTPStatusError, match=r"HTTP 429: .*queue_full"):
        asyncio.run(collect(b'HTTP/1.1 429 Too Many Requests\r\nContent-Length: 24\r\n\r\n{"code": "queue_full"}  '))
