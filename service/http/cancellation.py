"""Cancellation as a first-class concern: a client that goes away frees its slot.

Non-streaming handlers await the data plane while nothing reads the socket, so nobody would
notice the client leaving; `until_done_or_disconnected` races the work against the client's
disconnect and cancels the work when the client wins. (Streaming responses need no help:
Starlette cancels the body iterator on disconnect, which cancels the sequence.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from service.errors import KilnError

T = TypeVar("T")
POLL_S = 0.1


class ClientClosed(KilnError):
    """The client disconnected before the answer was ready (nginx's 499)."""

    code = "client_closed_request"
    http_status = 499


async def until_disconnected(request: Request, poll_s: float = POLL_S) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(poll_s)


async def until_done_or_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`await work`, unless the client leaves first: then the work is cancelled."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(until_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task not in done:
        task.cancel()
        raise ClientClosed("client disconnected")
    return task.result()
