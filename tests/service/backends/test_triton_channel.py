"""The shared Triton inference channel is retired when a model turns ready again: a channel that
sat through an outage may still be in gRPC's reconnect backoff and fail every call fast, while
the health monitor (its own channel) already reports the model ready.

No Triton here (tests/integration restarts a real one): the channel is only created, never
connected, and the monitor's transitions are driven through `_set`, as its poll drives them.
"""

from __future__ import annotations

import asyncio

import pytest

from service.backends.triton_client import ModelState, TritonConnection


def test_a_recovery_retires_the_inference_channel() -> None:
    pytest.importorskip("tritonclient.grpc.aio")
    conn = TritonConnection("127.0.0.1:1")
    conn._models["m"] = ModelState()  # watched, without starting the monitor thread

    async def channels() -> list[object]:
        seen = [conn.client(), conn.client()]
        conn._set("m", True, "ready")  # first ready
        seen.append(conn.client())
        conn._set("m", True, "ready")  # no change: same channel
        seen.append(conn.client())
        conn._set("m", False, "down")  # going down keeps it (calls in flight use it)
        seen.append(conn.client())
        conn._set("m", True, "ready")  # back: a fresh one
        seen.append(conn.client())
        return seen

    a, b, c, d, e, f = asyncio.run(channels())
    assert a is b  # one channel, reused by every request
    assert c is not b and d is c and e is c
    assert f is not e
