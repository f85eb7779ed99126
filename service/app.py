"""The FastAPI application: wiring only. Routes live in service/api, logic in service/engine."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.api import classify, generate, health
from service.api.openai import completions
from service.auth import ApiKeys, AuthMiddleware
from service.errors import HeadersTooLarge, InvalidRequest, KilnError, PayloadTooLarge
from service.logs import request_id_var
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings, get_settings

log = logging.getLogger("kiln.app")
access_log = logging.getLogger("kiln.access")

KNOWN_ROUTES = {"/generate", "/v1/completions", "/v1/models", "/classify", "/healthz", "/readyz", "/metrics"}


def error_response(exc: KilnError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers)


def describe_validation_error(exc: RequestValidationError) -> InvalidRequest:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return InvalidRequest("request body is not valid JSON", code="invalid_json")
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    if first.get("type") == "extra_forbidden":
        return InvalidRequest(f"unknown parameter `{loc}`", code="unknown_parameter")
    return InvalidRequest(f"`{loc}`: {first.get('msg', 'invalid value')}", code="invalid_parameter")


class ObservabilityMiddleware:
    """Pure ASGI (safe for streaming): request ids, body-size limit, request metrics."""

    def __init__(  # type: ignore[no-untyped-def]
        self,
        app,
        metrics: Metrics,
        max_body_bytes: int,
        max_header_bytes: int,
        path_limits: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.max_headers = max_header_bytes
        self.path_limits = path_limits or {}  # path → (limit, setting name), e.g. image uploads

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        id_token = request_id_var.set(request_id)
        path = scope["path"]
        route = path if path in KNOWN_ROUTES else "other"
        status = {"code": 500}
        started = time.perf_counter()

        async def send_wrapper(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        length = headers.get(b"content-length")
        limit, setting = self.path_limits.get(path, (self.max_body, "KILN_MAX_BODY_BYTES"))
        too_large = PayloadTooLarge(f"request body exceeds {limit} bytes ({setting})")
        self.metrics.in_flight.inc()
        try:
            header_bytes = sum(len(k) + len(v) for k, v in scope.get("headers") or [])
            if header_bytes > self.max_headers:
                too_big = HeadersTooLarge(f"request headers exceed {self.max_headers} bytes (KILN_MAX_HEADER_BYTES)")
                return await error_response(too_big)(scope, receive, send_wrapper)
            if length is not None and length.isdigit() and int(length) > limit:
                return await error_response(too_large)(scope, receive, send_wrapper)
            if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_limited(receive, limit)
                if body is None:
                    return await error_response(too_large)(scope, receive, send_wrapper)
                receive = self._replay(body, receive)
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, str(status["code"]), "http").inc()
            self.metrics.latency.labels(route).observe(elapsed)
            access_log.info("%s %s %d %.1fms", scope["method"], path, status["code"], 1000 * elapsed)
            request_id_var.reset(id_token)

    async def _read_limited(self, receive, limit: int) -> bytes | None:  # type: ignore[no-untyped-def]
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
    def _replay(body: bytes, receive):  # type: ignore[no-untyped-def]
        sent = False

        async def replay():  # type: ignore[no-untyped-def]
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        # Load in the background: /healthz answers at once, /readyz turns 200 when warm.
        loader = asyncio.get_running_loop().run_in_executor(None, registry.load_all)
        grpc_server = None
        if settings.grpc_port:
            from service.rpc.server import GrpcServer

            grpc_server = GrpcServer(registry, metrics, settings.host, settings.grpc_port, app.state.api_keys)
            await grpc_server.start()
        app.state.grpc = grpc_server
        yield
        registry.draining = True
        if grpc_server is not None:
            await grpc_server.stop(grace=1.0)
        await loader  # never close models that are still loading
        registry.close()

    app = FastAPI(title="Kiln", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry

    @app.exception_handler(KilnError)
    async def kiln_error(_: Request, exc: KilnError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = describe_validation_error(exc)
        err.http_status = 400
        return error_response(err)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(KilnError("internal error", code="internal_error"))

    app.include_router(health.router)
    app.include_router(generate.router)
    app.include_router(completions.router)
    keys = ApiKeys.from_settings(
        settings.api_keys.get_secret_value() if settings.api_keys else None, settings.api_keys_file
    )
    app.state.api_keys = keys
    # Added first = runs inside the observability middleware, so 401s are counted and carry a request id.
    app.add_middleware(AuthMiddleware, keys=keys)
    app.include_router(classify.router)
    app.add_middleware(
        ObservabilityMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        path_limits={"/classify": (settings.classify_max_body_bytes, "KILN_CLASSIFY_MAX_BODY_BYTES")},
    )
    return app
