"""Pure ASGI middleware (safe for streaming): request ids, size limits, request metrics, API keys.

Request metrics are labelled with the route template and the route's *task* (its OpenAPI tag:
`text-generation`, `image-classification`, `control`), so dashboards and alerts select "every
generation route" by task and a new route is counted without touching them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.auth import ApiKeys, Unauthenticated, current_principal
from service.errors import HeadersTooLarge, KilnError, PayloadTooLarge
from service.http.errors import error_response
from service.logs import request_id_var
from service.metrics import Metrics

access_log = logging.getLogger("kiln.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNROUTED = ("other", "none")  # the (route, task) labels of paths no route serves


async def send_error(exc: KilnError, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(exc)(scope, receive, send)


class ObservabilityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        routes: dict[str, str],
        max_body_bytes: int,
        max_header_bytes: int,
        path_limits: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # path -> task
        self.max_body = max_body_bytes
        self.max_headers = max_header_bytes
        self.path_limits = path_limits or {}  # path → (limit, setting name), e.g. image uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        id_token = request_id_var.set(request_id)
        path = scope["path"]
        route, task = (path, self.routes[path]) if path in self.routes else UNROUTED
        status = {"code": 500}
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        length = headers.get(b"content-length")
        limit, setting = self.path_limits.get(path, (self.max_body, "KILN_MAX_BODY_BYTES"))
        too_large = PayloadTooLarge(f"request body exceeds {limit} bytes ({setting})")
        self.metrics.in_flight.inc()
        try:
            header_bytes = sum(len(k) + len(v) for k, v in scope.get("headers") or [])
            if header_bytes > self.max_headers:
                too_big = HeadersTooLarge(f"request headers exceed {self.max_headers} bytes (KILN_MAX_HEADER_BYTES)")
                return await send_error(too_big, scope, receive, send_wrapper)
            if length is not None and length.isdigit() and int(length) > limit:
                return await send_error(too_large, scope, receive, send_wrapper)
            if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_limited(receive, limit)
                if body is None:
                    return await send_error(too_large, scope, receive, send_wrapper)
                receive = self._replay(body, receive)
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, str(status["code"]), "http", task).inc()
            self.metrics.latency.labels(route, task).observe(elapsed)
            access_log.info("%s %s %d %.1fms", scope["method"], path, status["code"], 1000 * elapsed)
            request_id_var.reset(id_token)

    async def _read_limited(self, receive: Receive, limit: int) -> bytes | None:
        """Buffer a body of unknown length; None once it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


class AuthMiddleware:
    """Authenticate every HTTP request except the exempt paths (health, metrics)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, exempt: frozenset[str]) -> None:
        self.app = app
        self.keys = keys
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            principal = self.keys.authenticate(_header(headers, b"authorization"), _header(headers, b"x-api-key"))
        except Unauthenticated as exc:
            return await send_error(exc, scope, receive, send)
        token = current_principal.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            current_principal.reset(token)


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None
