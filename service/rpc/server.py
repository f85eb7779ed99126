"""gRPC transport: `kiln.v1.Kiln` on grpc.aio, in the HTTP app's process and event loop.

It shares the registry, engines and metrics with the REST routes and reuses their request
schema, so limits, defaults and error messages are identical; only the status codes differ
(mapped once, in GRPC_CODES).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from service.api.generate import to_params
from service.api.schemas import GenerateRequest
from service.auth import ApiKeys, current_principal
from service.engine.request import FinishEvent
from service.errors import InvalidRequest, KilnError, NotSupported
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.rpc import kiln_v1_pb2 as pb
from service.rpc import kiln_v1_pb2_grpc as pb_grpc

log = logging.getLogger("kiln.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Kiln"].full_name
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def to_schema(req: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> GenerateRequest:
    """Proto -> the REST schema, so validation is shared; the gRPC deadline caps timeout_s."""
    fields: dict = {"prompt": req.prompt, "stop": list(req.stop) or None, "ignore_eos": req.ignore_eos}
    if req.model:
        fields["model"] = req.model
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "timeout_s"):
        if req.HasField(name):
            fields[name] = getattr(req, name)
    remaining = context.time_remaining()
    if remaining is not None:
        fields["timeout_s"] = min(fields.get("timeout_s", remaining), max(remaining, 1e-3))
    try:
        return GenerateRequest(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"`{loc}`: {first['msg']}", code="invalid_parameter") from exc


def finish_messages(model: str, event: FinishEvent) -> tuple[pb.Usage, pb.Timings]:
    usage = pb.Usage(
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        total_tokens=event.prompt_tokens + event.completion_tokens,
    )
    timings = pb.Timings(total_ms=event.total_s * 1000, queue_ms=event.queue_s * 1000)
    if event.ttft_s is not None:
        timings.ttft_ms = event.ttft_s * 1000
    return usage, timings


def observed(method: str, streaming: bool = False) -> Callable:
    """Count requests by status with protocol="grpc" and map KilnError to a gRPC status."""
    route = f"/{SERVICE_NAME}/{method}"

    def wrap(fn: Callable) -> Callable:
        async def fail(self: KilnServicer, context: grpc.aio.ServicerContext, exc: KilnError) -> None:
            code = GRPC_CODES.get(exc.http_status, grpc.StatusCode.INTERNAL)
            await context.abort(code, f"{exc.code}: {exc.message}")

        def record(self: KilnServicer, status: str, started: float) -> None:
            self.metrics.requests.labels(route, status, "grpc").inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

        if streaming:

            @functools.wraps(fn)
            async def stream_handler(self, request, context):  # type: ignore[no-untyped-def]
                started, status = time.perf_counter(), "OK"
                try:
                    self.authenticate(context)
                    async for item in fn(self, request, context):
                        yield item
                except KilnError as exc:
                    status = GRPC_CODES.get(exc.http_status, grpc.StatusCode.INTERNAL).name
                    await fail(self, context, exc)
                except asyncio.CancelledError:
                    status = "CANCELLED"
                    raise
                finally:
                    record(self, status, started)

            return stream_handler

        @functools.wraps(fn)
        async def unary_handler(self, request, context):  # type: ignore[no-untyped-def]
            started, status = time.perf_counter(), "OK"
            try:
                self.authenticate(context)
                return await fn(self, request, context)
            except KilnError as exc:
                status = GRPC_CODES.get(exc.http_status, grpc.StatusCode.INTERNAL).name
                await fail(self, context, exc)
            except asyncio.CancelledError:
                status = "CANCELLED"
                raise
            finally:
                record(self, status, started)

        return unary_handler

    return wrap


class KilnServicer(pb_grpc.KilnServicer):
    def __init__(self, registry: ModelRegistry, metrics: Metrics, keys: ApiKeys | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.keys = keys or ApiKeys({})

    def authenticate(self, context: grpc.aio.ServicerContext) -> None:
        """Same keys as HTTP, from `authorization: Bearer KEY` or `x-api-key` metadata."""
        if not self.keys.enabled:
            return
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        current_principal.set(self.keys.authenticate(metadata.get("authorization"), metadata.get("x-api-key")))

    @observed("Generate")
    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        body = to_schema(request, context)
        model = self.registry.text_model(body.model)
        text, event = await model.generate(to_params(body, model), protocol="grpc")
        self.metrics.prompt_tokens.labels(model.name, "grpc").inc(event.prompt_tokens)
        usage, timings = finish_messages(model.name, event)
        return pb.GenerateResponse(
            id=f"gen-{uuid.uuid4().hex[:16]}",
            model=model.name,
            text=text,
            finish_reason=event.reason,
            usage=usage,
            timings=timings,
        )

    @observed("GenerateStream", streaming=True)
    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        body = to_schema(request, context)
        model = self.registry.text_model(body.model)
        stream = model.open_stream(to_params(body, model), protocol="grpc")
        self.metrics.prompt_tokens.labels(model.name, "grpc").inc(stream.prompt_tokens)
        request_id = f"gen-{uuid.uuid4().hex[:16]}"
        async for event in stream:  # cancellation by the client closes this and frees the slot
            if isinstance(event, FinishEvent):
                if event.reason == "error":
                    raise event.error or KilnError(event.message or "inference failed", code="inference_failed")
                usage, timings = finish_messages(model.name, event)
                finish = pb.Finish(
                    id=request_id, model=model.name, finish_reason=event.reason, usage=usage, timings=timings
                )
                yield pb.GenerateStreamResponse(finish=finish)
            elif event.text:
                yield pb.GenerateStreamResponse(chunk=pb.TokenChunk(text=event.text, token_ids=[event.token_id]))

    @observed("Classify")
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        classify = getattr(self.registry, "classify_grpc", None)
        if classify is None:
            raise NotSupported("image classification is not available on this server")
        return await classify(request)

    @observed("ListModels")
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models = [
            pb.ModelInfo(id=name, kind=m.kind, ready=getattr(m, "ready", True), context_length=m.context_length or 0)
            for name, m in self.registry.models.items()
        ]
        return pb.ListModelsResponse(models=models)


class GrpcServer:
    """Owns the grpc.aio server, the health service and reflection."""

    def __init__(
        self, registry: ModelRegistry, metrics: Metrics, host: str, port: int, keys: ApiKeys | None = None
    ) -> None:
        self.registry = registry
        self.server = grpc.aio.server()
        pb_grpc.add_KilnServicer_to_server(KilnServicer(registry, metrics, keys), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        self._watcher: asyncio.Task | None = None

    async def start(self) -> None:
        await self.server.start()
        await self._set_health(False)
        self._watcher = asyncio.create_task(self._watch_readiness())
        log.info("gRPC listening on port %d", self.port)

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def _watch_readiness(self) -> None:
        """Mirror /readyz into grpc.health.v1 (NOT_SERVING while loading or draining)."""
        last = None
        while True:
            ready = self.registry.ready and not self.registry.draining
            if ready != last:
                await self._set_health(ready)
                last = ready
            await asyncio.sleep(0.1)

    async def stop(self, grace: float) -> None:
        if self._watcher:
            self._watcher.cancel()
        await self._set_health(False)
        await self.server.stop(grace)
