"""POST /v1/completions: the OpenAI Completions API over Kiln's text engine."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service.api.openai.protocol import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    LogProbs,
)
from service.api.schemas import COMPLETIONS_SSE_200, ERRORS
from service.engine.request import FinishEvent, TokenEvent
from service.engine.sampling import SamplingParams
from service.engine.textgen import EventStream, GenerateParams, TextModel
from service.errors import InvalidRequest, KilnError

router = APIRouter()

FINISH = {"eos": "stop", "stop": "stop", "length": "length", "timeout": "length"}


def to_params(body: CompletionRequest, model: TextModel, prompt: str, index: int) -> GenerateParams:
    max_new = body.max_tokens or 16
    limit = model.settings.max_new_tokens_limit
    if max_new > limit:
        raise InvalidRequest(
            f"max_tokens={max_new} exceeds the limit {limit} (KILN_MAX_NEW_TOKENS_LIMIT)",
            code="max_new_tokens_too_large",
            param="max_tokens",
        )
    if len(body.stops) > model.settings.max_stop_strings or any(not s for s in body.stops):
        raise InvalidRequest(
            f"stop takes 1 to {model.settings.max_stop_strings} non-empty strings", code="invalid_stop", param="stop"
        )
    seed = None if body.seed is None else body.seed + index  # n choices must differ
    sampling = SamplingParams(
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        repetition_penalty=body.repetition_penalty,
        seed=seed,
    )
    return GenerateParams(prompt, max_new, sampling, body.stops, logprobs=body.logprobs)


class LogProbBuilder:
    """Accumulates the legacy Completions `logprobs` object for one choice."""

    def __init__(self, model: TextModel) -> None:
        self.model = model
        self.value = LogProbs()
        self.offset = 0

    def token_text(self, token_id: int) -> str:
        return self.model.tokenizer.decode([token_id], skip_special_tokens=False)

    def add(self, event: TokenEvent) -> LogProbs:
        text = self.token_text(event.token_id)
        step = LogProbs(
            tokens=[text],
            token_logprobs=[event.logprob or 0.0],
            top_logprobs=[{self.token_text(t): lp for t, lp in (event.top_logprobs or [])}],
            text_offset=[self.offset],
        )
        self.offset += len(text)
        for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            getattr(self.value, field).extend(getattr(step, field))
        return step


@router.post("/v1/completions", response_model=Completion, responses={**COMPLETIONS_SSE_200, **ERRORS})
async def completions(body: CompletionRequest, request: Request):  # type: ignore[no-untyped-def]
    body.refuse_unsupported()
    registry = request.app.state.registry
    model = registry.text_model(body.model)
    jobs = [(p, i) for p in body.prompts for i in range(body.n)]
    params = [to_params(body, model, prompt, i) for prompt, i in jobs]
    completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    # Validate and enqueue every choice before answering, so errors arrive as plain 4xx.
    streams: list[EventStream] = []
    try:
        for p in params:
            streams.append(model.open_stream(p))
    except KilnError:
        for s in streams:
            s.request.cancel()
        raise
    prompt_tokens = sum(s.prompt_tokens for idx, s in enumerate(streams) if jobs[idx][1] == 0)
    registry.metrics.prompt_tokens.labels(model.name, "openai").inc(prompt_tokens)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        gen = stream_chunks(streams, model, completion_id, created, body, prompt_tokens, include_usage)
        return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    results = await asyncio.gather(*(collect(s, model, body.logprobs is not None) for s in streams))
    choices = []
    completion_tokens = 0
    for index, (text, fin, logprobs) in enumerate(results):
        if fin.reason == "error":
            raise fin.error or KilnError(fin.message or "inference failed", code="inference_failed")
        completion_tokens += fin.completion_tokens
        choices.append(CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=FINISH[fin.reason]))
    usage = CompletionUsage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )
    return Completion(id=completion_id, created=created, model=model.name, choices=choices, usage=usage)


async def collect(
    stream: EventStream, model: TextModel, want_logprobs: bool
) -> tuple[str, FinishEvent, LogProbs | None]:
    builder = LogProbBuilder(model) if want_logprobs else None
    parts: list[str] = []
    async for event in stream:
        if isinstance(event, FinishEvent):
            return "".join(parts), event, builder.value if builder else None
        parts.append(event.text)
        if builder and event.token_id >= 0:
            builder.add(event)
    raise RuntimeError("stream ended without a finish event")


async def stream_chunks(
    streams: list[EventStream],
    model: TextModel,
    completion_id: str,
    created: int,
    body: CompletionRequest,
    prompt_tokens: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """Merge the choices' event streams into one SSE stream, in arrival order."""
    merged: asyncio.Queue[tuple[int, TokenEvent | FinishEvent]] = asyncio.Queue()

    async def pump(index: int, stream: EventStream) -> None:
        async for event in stream:
            await merged.put((index, event))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    builders = [LogProbBuilder(model) if body.logprobs is not None else None for _ in streams]
    remaining = len(streams)
    completion_tokens = 0

    def chunk(choice: CompletionChoice) -> bytes:
        return Completion(id=completion_id, created=created, model=model.name, choices=[choice]).sse()

    try:
        while remaining:
            index, event = await merged.get()
            if isinstance(event, FinishEvent):
                remaining -= 1
                completion_tokens += event.completion_tokens
                reason = FINISH.get(event.reason, event.reason)
                yield chunk(CompletionChoice(index=index, text="", finish_reason=reason))
                continue
            logprobs = builders[index].add(event) if builders[index] and event.token_id >= 0 else None
            if event.text or logprobs:
                yield chunk(CompletionChoice(index=index, text=event.text, logprobs=logprobs))
        if include_usage:
            usage = CompletionUsage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )
            final = Completion(id=completion_id, created=created, model=model.name, choices=[], usage=usage)
            yield final.sse()
        yield b"data: [DONE]\n\n"
    finally:
        for task in tasks:
            task.cancel()
