"""The gRPC transport's one error path: auth, request ids, metrics and error mapping, once.

Every `kiln.v1.Kiln` call passes through `KilnInterceptor`: it authenticates the API key from
metadata (`authorization: Bearer KEY` or `x-api-key`), sets the request id (`x-request-id`
metadata or a fresh one, returned in trailing metadata and carried by every log line), counts
the call by final status, and maps a `KilnError` — raised before the first response or after
it, in a stream — to the gRPC status of its HTTP status with `<code>: <message>` as details and
the code in trailing metadata (`kiln-error-code`). Anything else is a bug: status INTERNAL,
logged with its traceback and request id, counted as INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from service.auth import ApiKeys, current_principal
from service.errors import KilnError
from service.logs import request_id_var
from service.metrics import Metrics

log = logging.getLogger("kiln.grpc")

GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
INTERNAL = KilnError("internal error", code="internal_error")

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def status_of(exc: KilnError) -> grpc.StatusCode:
    return GRPC_CODES.get(exc.http_status, grpc.StatusCode.INTERNAL)


class KilnInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, metrics: Metrics, keys: ApiKeys, tasks: dict[str, str]) -> None:
        self.prefix = f"/{service}/"
        self.metrics = metrics
        self.keys = keys
        self.tasks = tasks  # method name -> task label (as the HTTP routes' tags)

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler  # health, reflection: no keys, no Kiln metrics
        route = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, route),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, route),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(self, behavior: Unary, route: str) -> Unary:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with _Call(self, route, context) as c:
                try:
                    self._authenticate(context)
                    return await behavior(request, context)
                except BaseException as exc:  # noqa: B036 - classified, then re-raised or mapped
                    await c.fail(exc)

        return call

    def _streaming(self, behavior: Streaming, route: str) -> Streaming:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with _Call(self, route, context) as c:
                try:
                    self._authenticate(context)
                    async for item in behavior(request, context):
                        yield item
                except BaseException as exc:  # noqa: B036 - classified, then re-raised or mapped
                    await c.fail(exc)

        return call

    def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        """Same keys as HTTP, from `authorization: Bearer KEY` or `x-api-key` metadata."""
        if not self.keys.enabled:
            return
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        current_principal.set(self.keys.authenticate(metadata.get("authorization"), metadata.get("x-api-key")))


class _Call:
    """One call's request id, timing and final status."""

    def __init__(self, owner: KilnInterceptor, route: str, context: grpc.aio.ServicerContext) -> None:
        self.owner = owner
        self.route = route
        self.context = context
        self.status = "OK"
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        self.request_id = str(metadata.get("x-request-id", ""))[:128] or uuid.uuid4().hex

    def __enter__(self) -> _Call:
        self.started = time.perf_counter()
        self._rid = request_id_var.set(self.request_id)
        self._principal = current_principal.set(None)
        self.context.set_trailing_metadata((("x-request-id", self.request_id),))
        return self

    async def fail(self, exc: BaseException) -> None:
        """Re-raise what is not an error of the call's own; abort with the mapped status otherwise."""
        if isinstance(exc, asyncio.CancelledError):
            self.status = "CANCELLED"
            raise exc
        if isinstance(exc, grpc.aio.AbortError):
            raise exc  # already aborted with its status
        if not isinstance(exc, KilnError):
            if not isinstance(exc, Exception):
                raise exc  # KeyboardInterrupt, SystemExit: not ours to map
            log.error("unexpected error in %s (request %s)", self.route, self.request_id, exc_info=exc)
            exc = INTERNAL
        code = status_of(exc)
        self.status = code.name
        trailing = (("x-request-id", self.request_id), ("kiln-error-code", exc.code))
        await self.context.abort(code, f"{exc.code}: {exc.message}", trailing_metadata=trailing)

    def __exit__(self, *_: object) -> None:
        elapsed = time.perf_counter() - self.started
        task = self.owner.tasks.get(self.route.rsplit("/", 1)[-1], "none")
        self.owner.metrics.requests.labels(self.route, self.status, "grpc", task).inc()
        self.owner.metrics.latency.labels(self.route, task).observe(elapsed)
        try:
            current_principal.reset(self._principal)
            request_id_var.reset(self._rid)
        except ValueError:  # a stream closed from another context (its task is gone): nothing to restore
            pass
