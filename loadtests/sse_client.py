"""A lean HTTP/1.1 client for one streaming POST: the benchmarks' load generator.

The benchmarks run the server and its clients on the same 2 cores, so whatever CPU the load
generator spends per token is taken from the server being measured. httpx (h11, its stream
and line iterators, one task wake-up per line) spent ~500 µs of CPU per streamed token with
one client, a fifth of a core at int4 speed; a real deployment's clients run elsewhere. This
client reads the response with asyncio's stream reader, undoes chunked transfer encoding and
splits Server-Sent Events itself: one wake-up per chunk the server writes, a few bytes
operations per event. It speaks only what the benchmarks need (one request per connection,
`Connection: close`), and it checks the status like any client: a non-200 answer raises.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class HTTPStatusError(RuntimeError):
    pass


async def sse_post(url: str, path: str, body: dict, timeout: float = 600.0) -> AsyncIterator[tuple[str, bytes]]:
    """POST `body` as JSON to `url` + `path`; yield each event as (event name, data bytes) the
    moment its chunk arrives (name "" when the event has none, as SSE defines "message")."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 80), timeout)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        status, chunked = await _read_head(reader, timeout)
        if status != 200:
            raise HTTPStatusError(f"HTTP {status}: {(await reader.read(300))!r}")
        pending = b""
        async for data in _body(reader, chunked, timeout):
            pending += data
            *events, pending = pending.split(b"\n\n")
            for event in events:
                yield _parse(event)
    finally:
        writer.close()


async def _read_head(reader: asyncio.StreamReader, timeout: float) -> tuple[int, bool]:
    status_line = await asyncio.wait_for(reader.readline(), timeout)
    status = int(status_line.split(b" ", 2)[1])
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return status, chunked


async def _body(reader: asyncio.StreamReader, chunked: bool, timeout: float) -> AsyncIterator[bytes]:
    if not chunked:
        while data := await asyncio.wait_for(reader.read(65536), timeout):
            yield data
        return
    while True:
        size = int((await asyncio.wait_for(reader.readline(), timeout)).split(b";")[0], 16)
        if size == 0:
            return
        data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)  # the chunk and its CRLF
        yield data[:-2]


def _parse(event: bytes) -> tuple[str, bytes]:
    name, data = "", []
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip().decode()
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)  # one space, as SSE defines
    return name, b"\n".join(data)
