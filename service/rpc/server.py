"""gRPC transport: `kiln.v1.Kiln` on grpc.aio, in the HTTP app's process and event loop.

The servicer only translates: proto → the data plane's neutral options, events and results →
proto. Auth, request ids, metrics and error mapping are the interceptor's
(service/rpc/interceptor.py), so an error means the same thing here as over REST.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.api.schemas import CONTROL, TEXT, VISION
from service.auth import ApiKeys, current_principal
from service.dataplane.caller import Caller
from service.dataplane.chat import ChatDataPlane, ChatMessage
from service.dataplane.text import TextDataPlane, TextOptions, collect
from service.dataplane.vision import VisionDataPlane
from service.engine.request import FinishEvent
from service.engine.textgen import TextStream
from service.errors import InvalidRequest, KilnError
from service.logs import request_id_var
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.rpc import classify as rpc_classify
from service.rpc import kiln_v1_pb2 as pb
from service.rpc import kiln_v1_pb2_grpc as pb_grpc
from service.rpc.interceptor import KilnInterceptor
from service.structured import ResponseFormat

log = logging.getLogger("kiln.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Kiln"].full_name
TASKS = {
    "Generate": TEXT,
    "GenerateStream": TEXT,
    "Chat": TEXT,
    "ChatStream": TEXT,
    "Classify": VISION,
    "ListModels": CONTROL,
}


def caller() -> Caller:
    """The caller as the interceptor identified it."""
    return Caller("grpc", current_principal.get(), request_id_var.get())


def to_options(req: pb.GenerateRequest | pb.ChatRequest, context: grpc.aio.ServicerContext) -> TextOptions:
    """Proto → neutral options (Generate and Chat share the sampling fields); unset optional
    fields keep the model's defaults. The call's deadline caps timeout_s."""

    def opt(name: str) -> float | None:
        return getattr(req, name) if req.HasField(name) else None

    def whole(name: str) -> int | None:
        value = opt(name)
        return None if value is None else int(value)

    timeout = opt("timeout_s")
    remaining = context.time_remaining()
    if remaining is not None:
        timeout = min(timeout if timeout is not None else remaining, max(remaining, 1e-3))
    chat = isinstance(req, pb.ChatRequest)
    return TextOptions(
        prompt="" if chat else req.prompt,
        model=req.model or None,
        max_new_tokens=whole("max_new_tokens"),
        fit_to_context=chat,
        temperature=opt("temperature"),
        top_k=whole("top_k"),
        top_p=opt("top_p"),
        min_p=opt("min_p"),
        repetition_penalty=opt("repetition_penalty"),
        presence_penalty=opt("presence_penalty"),
        frequency_penalty=opt("frequency_penalty"),
        logit_bias={int(k): float(v) for k, v in req.logit_bias.items()},
        min_tokens=whole("min_tokens"),
        stop_token_ids=list(req.stop_token_ids),
        seed=whole("seed"),
        stop=list(req.stop),
        timeout_s=timeout,
        ignore_eos=False if chat else req.ignore_eos,
        response_format=response_format(req.response_format) if req.HasField("response_format") else None,
    )


def response_format(fmt: pb.ResponseFormat) -> ResponseFormat:
    schema = None
    if fmt.json_schema:
        try:
            schema = json.loads(fmt.json_schema)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(
                f"response_format.json_schema is not JSON: {exc}",
                code="invalid_response_format",
                param="response_format",
            ) from exc
    return ResponseFormat(fmt.type or "text", schema=schema, strict=fmt.strict, regex=fmt.regex or None)


def finish_messages(event: FinishEvent) -> tuple[pb.Usage, pb.Timings]:
    usage = pb.Usage(
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        total_tokens=event.prompt_tokens + event.completion_tokens,
        cached_tokens=event.cached_tokens,
    )
    timings = pb.Timings(total_ms=event.total_s * 1000, queue_ms=event.queue_s * 1000)
    if event.ttft_s is not None:
        timings.ttft_ms = event.ttft_s * 1000
    return usage, timings


def chat_messages(req: pb.ChatRequest) -> list[ChatMessage]:
    return [ChatMessage(m.role, m.content, m.name or None) for m in req.messages]


async def stream_messages(stream: TextStream, model: str, request_id: str) -> AsyncIterator[pb.GenerateStreamResponse]:
    """Events → stream messages; a failure ends the call through the interceptor (its status)."""
    try:
        async for event in stream:
            if isinstance(event, FinishEvent):
                if event.reason == "error":
                    raise event.error or KilnError(event.message or "inference failed", code="inference_failed")
                usage, timings = finish_messages(event)
                finish = pb.Finish(id=request_id, model=model, finish_reason=event.reason, usage=usage, timings=timings)
                yield pb.GenerateStreamResponse(finish=finish)
            elif event.text:
                yield pb.GenerateStreamResponse(chunk=pb.TokenChunk(text=event.text, token_ids=[event.token_id]))
    finally:
        stream.cancel()  # a client that went away frees its slot at the next engine step


class KilnServicer(pb_grpc.KilnServicer):
    def __init__(self, registry: ModelRegistry, text: TextDataPlane, vision: VisionDataPlane) -> None:
        self.registry = registry
        self.text = text
        self.chat = ChatDataPlane(text)
        self.vision = vision

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        who = caller()
        model, done = await self.text.complete(who, to_options(request, context))
        usage, timings = finish_messages(done.finish)
        return pb.GenerateResponse(
            id=who.request_id,
            model=model.name,
            text=done.text,
            finish_reason=done.finish.reason,
            usage=usage,
            timings=timings,
        )

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        who = caller()
        model, stream = self.text.open(who, to_options(request, context))
        async for message in stream_messages(stream, model.name, who.request_id):
            yield message

    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.ChatResponse:
        who = caller()
        model, [stream] = self.chat.open_many(who, chat_messages(request), [to_options(request, context)])
        done = await collect(stream)
        usage, timings = finish_messages(done.finish)
        message = pb.ChatMessage(role="assistant", content=done.text)
        return pb.ChatResponse(
            id=who.request_id,
            model=model.name,
            message=message,
            finish_reason=done.finish.reason,
            usage=usage,
            timings=timings,
        )

    async def ChatStream(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        who = caller()
        model, [stream] = self.chat.open_many(who, chat_messages(request), [to_options(request, context)])
        async for message in stream_messages(stream, model.name, who.request_id):
            yield message

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        out = await self.vision.classify(caller(), list(request.images), rpc_classify.to_fields(request))
        return rpc_classify.to_response(out)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models = [
            pb.ModelInfo(id=name, kind=m.kind, ready=m.ready, context_length=m.context_length or 0)
            for name, m in self.registry.models.items()
        ]
        return pb.ListModelsResponse(models=models)


class GrpcServer:
    """Owns the grpc.aio server, the health service and reflection."""

    def __init__(
        self,
        registry: ModelRegistry,
        text: TextDataPlane,
        vision: VisionDataPlane,
        metrics: Metrics,
        host: str,
        port: int,
        keys: ApiKeys,
    ) -> None:
        self.registry = registry
        self.server = grpc.aio.server(interceptors=[KilnInterceptor(SERVICE_NAME, metrics, keys, TASKS)])
        pb_grpc.add_KilnServicer_to_server(KilnServicer(registry, text, vision), self.server)
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
