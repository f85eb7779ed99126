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


def test_a_fresh_channel_does_not_inherit_the_old_ones_reconnect_backoff() -> None:
    """The retirement above only helps if the new channel connects on its own: a real gRPC server
    starts on a port an old channel kept failing to reach, and a channel made then (Kiln's
    arguments) must succeed at once rather than share the old connection's backoff."""
    import socket

    import grpc
    from grpc import aio

    from service.backends.triton_client import CHANNEL_ARGS

    class Pong(grpc.GenericRpcHandler):
        def service(self, details):  # type: ignore[no-untyped-def]
            return grpc.unary_unary_rpc_method_handler(lambda request, context: b"pong")

    async def call(channel: aio.Channel) -> str:
        try:
            return (await channel.unary_unary("/kiln.Test/Ping")(b"", timeout=2)).decode()
        except grpc.RpcError as exc:
            return exc.code().name

    async def scenario() -> tuple[str, str]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        url = f"127.0.0.1:{sock.getsockname()[1]}"
        sock.close()
        old = aio.insecure_channel(url, options=CHANNEL_ARGS)
        for _ in range(5):  # an outage: the old channel's backoff grows to its maximum
            refused = await call(old)
            await asyncio.sleep(0.3)
        server = aio.server()
        server.add_generic_rpc_handlers((Pong(),))
        server.add_insecure_port(url)
        await server.start()
        try:
            return refused, await call(aio.insecure_channel(url, options=CHANNEL_ARGS))
        finally:
            await server.stop(0)
            await old.close()

    refused, fresh = asyncio.run(scenario())
    assert refused == "UNAVAILABLE"
    assert fresh == "pong"
