"""Server-Sent Events as Kiln writes them, including the one encoding of a late error.

Once a stream's 200 has gone out, a failure can no longer change the status. Every SSE route
(`/generate`, the OpenAI routes) then sends the same thing: an `event: error` whose data is
Kiln's error body, `{"error": {"code", "message", "type", "param"}}`, then `data: [DONE]`.
(The official `openai` client raises APIError on it; gRPC ends the call with the mapped status
and `<code>: <message>` details, service/rpc/interceptor.py.)
"""

from __future__ import annotations

from typing import Any

import orjson

from service.errors import KilnError

DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"


def event(data: Any, name: str | None = None) -> bytes:
    """One event; `data` is JSON-encoded (orjson: one C call, UTF-8 as is) unless it is already text.
    Streaming routes build plain dicts per token: no model validation on the hot path."""
    payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
    return (b"event: " + name.encode() + b"\n" if name else b"") + b"data: " + payload + b"\n\n"


def error_event(exc: KilnError) -> bytes:
    return event(exc.body(), "error")
