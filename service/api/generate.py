"""POST /generate: Kiln's own REST schema ⇄ the text data plane."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service.api.context import caller_of, text_plane
from service.api.openai.protocol import token_bias
from service.api.schemas import ERRORS, GENERATE_SSE_200, TEXT, GenerateRequest, GenerateResponse, Timings, Usage
from service.dataplane.text import TextOptions
from service.engine.request import FinishEvent
from service.engine.textgen import TextStream
from service.errors import KilnError
from service.http import sse
from service.http.cancellation import until_done_or_disconnected

router = APIRouter(tags=[TEXT])


def to_options(body: GenerateRequest) -> TextOptions:
    return TextOptions(
        prompt=body.prompt,
        model=body.model,
        max_new_tokens=body.max_new_tokens,
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        stop=list(body.stop or []),
        timeout_s=body.timeout_s,
        ignore_eos=body.ignore_eos,
        min_p=body.min_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=token_bias(body.logit_bias),
        min_tokens=body.min_tokens,
        stop_token_ids=list(body.stop_token_ids or []),
        response_format=body.response_format.neutral() if body.response_format else None,
    )


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
        cached_tokens=event.cached_tokens,
    )
    return {"model": model, "finish_reason": event.reason, "usage": usage.model_dump(), "timings": timings.model_dump()}


@router.post("/generate", response_model=GenerateResponse, responses={**GENERATE_SSE_200, **ERRORS})
async def generate(body: GenerateRequest, request: Request):  # type: ignore[no-untyped-def]
    plane, caller = text_plane(request), caller_of(request, "http")
    options = to_options(body)
    if body.stream:
        model, stream = plane.open(caller, options)
        return StreamingResponse(
            sse_events(stream, model.name, caller.request_id), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS
        )
    model, done = await until_done_or_disconnected(request, plane.complete(caller, options))
    return GenerateResponse(id=caller.request_id, text=done.text, **finish_payload(model.name, done.finish))


async def sse_events(stream: TextStream, model: str, request_id: str) -> AsyncIterator[bytes]:
    """One write per burst: the tokens a slow reader has not taken yet go out together."""
    async for burst in stream.bursts():
        out: list[bytes] = []
        for event in burst:
            if isinstance(event, FinishEvent):
                if event.reason == "error":
                    error = event.error or KilnError(event.message or "inference failed", code="inference_failed")
                    out.append(sse.error_event(error))
                else:
                    out.append(sse.event({"id": request_id, **finish_payload(model, event)}, "finish"))
                out.append(sse.DONE)
            elif event.text:
                out.append(sse.event({"id": request_id, "text": event.text, "token": event.token_id}))
        if out:
            yield b"".join(out)
