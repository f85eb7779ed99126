"""POST /generate: translate between Kiln's REST schema and the text model's events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service.api.schemas import ERRORS, GENERATE_SSE_200, GenerateRequest, GenerateResponse, Timings, Usage
from service.engine.request import FinishEvent
from service.engine.sampling import SamplingParams
from service.engine.textgen import EventStream, GenerateParams, TextModel
from service.errors import InvalidRequest, KilnError

router = APIRouter()


def to_params(body: GenerateRequest, model: TextModel) -> GenerateParams:
    """Apply the model's defaults and the server's limits to a request."""
    s = model.settings
    d = model.manifest.generation_defaults
    max_new = body.max_new_tokens if body.max_new_tokens is not None else int(d.get("max_new_tokens", 64))
    if max_new > s.max_new_tokens_limit:
        raise InvalidRequest(
            f"max_new_tokens={max_new} exceeds the limit {s.max_new_tokens_limit} (KILN_MAX_NEW_TOKENS_LIMIT)",
            code="max_new_tokens_too_large",
        )
    stop = body.stop or []
    if len(stop) > s.max_stop_strings:
        raise InvalidRequest(f"at most {s.max_stop_strings} stop strings (KILN_MAX_STOP_STRINGS)", code="too_many_stop")
    if any(len(x) > 256 or not x for x in stop):
        raise InvalidRequest("stop strings must be 1 to 256 characters", code="invalid_stop")
    top_k = body.top_k if body.top_k is not None else int(d.get("top_k", 0))
    if top_k > model.manifest.vocab_size:
        raise InvalidRequest(f"top_k={top_k} exceeds the vocabulary size {model.manifest.vocab_size}")
    sampling = SamplingParams(
        temperature=body.temperature if body.temperature is not None else float(d.get("temperature", 0.0)),
        top_k=top_k,
        top_p=body.top_p if body.top_p is not None else float(d.get("top_p", 1.0)),
        repetition_penalty=(
            body.repetition_penalty if body.repetition_penalty is not None else float(d.get("repetition_penalty", 1.0))
        ),
        seed=body.seed,
    )
    return GenerateParams(body.prompt, max_new, sampling, stop, body.timeout_s, body.ignore_eos)


def finish_payload(model: str, event: FinishEvent) -> dict:
    usage = Usage(
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        total_tokens=event.prompt_tokens + event.completion_tokens,
    )
    timings = Timings(
        ttft_ms=None if event.ttft_s is None else round(event.ttft_s * 1000, 3),
        total_ms=round(event.total_s * 1000, 3),
        queue_ms=round(event.queue_s * 1000, 3),
    )
    return {"model": model, "finish_reason": event.reason, "usage": usage, "timings": timings}


async def until_disconnect(request: Request, poll_s: float = 0.2) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(poll_s)


@router.post("/generate", response_model=GenerateResponse, responses={**GENERATE_SSE_200, **ERRORS})
async def generate(body: GenerateRequest, request: Request):  # type: ignore[no-untyped-def]
    registry = request.app.state.registry
    model = registry.text_model(body.model)
    params = to_params(body, model)
    request_id = request.state.request_id
    if body.stream:
        stream = model.open_stream(params)
        registry.metrics.prompt_tokens.labels(model.name, "http").inc(stream.prompt_tokens)
        return StreamingResponse(
            sse_events(stream, model.name, request_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    # Race generation against the client leaving, so an abandoned request frees its slot.
    gen_task = asyncio.ensure_future(model.generate(params))
    gone = asyncio.ensure_future(until_disconnect(request))
    done, _ = await asyncio.wait({gen_task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if gen_task not in done:
        gen_task.cancel()
        raise KilnError("client disconnected", code="client_closed_request")
    gone.cancel()
    text, event = gen_task.result()
    registry.metrics.prompt_tokens.labels(model.name, "http").inc(event.prompt_tokens)
    return GenerateResponse(id=request_id, text=text, **finish_payload(model.name, event))


async def sse_events(stream: EventStream, model: str, request_id: str) -> AsyncIterator[bytes]:
    async for event in stream:
        if isinstance(event, FinishEvent):
            payload = {"id": request_id, **finish_payload(model, event)}
            if event.reason == "error":
                code = event.error.code if event.error else "inference_failed"
                payload["error"] = {"code": code, "message": event.message}
            data = json.dumps(payload, default=lambda o: o.model_dump())
            yield f"event: finish\ndata: {data}\n\n".encode()
            yield b"data: [DONE]\n\n"
        elif event.text:
            yield f"data: {json.dumps({'id': request_id, 'text': event.text, 'token': event.token_id})}\n\n".encode()


def new_request_id() -> str:
    return f"gen-{uuid.uuid4().hex[:16]}"
