"""POST /v1/completions: the OpenAI Completions API ⇄ the text data plane."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service.api.context import caller_of, text_plane
from service.api.openai.protocol import (
    FINISH,
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    LogProbs,
    openai_errors,
)
from service.api.openai.streaming import stream_sse
from service.api.schemas import COMPLETIONS_SSE_200, ERRORS, TEXT
from service.dataplane.text import Completed, TextOptions, collect
from service.engine.request import TokenEvent
from service.engine.textgen import BaseTextModel, TextStream
from service.http import sse
from service.http.cancellation import until_done_or_disconnected

router = APIRouter(tags=[TEXT])


def to_options(body: CompletionRequest, prompt: str, choice: int) -> TextOptions:
    return TextOptions(
        prompt=prompt,
        model=body.model,
        max_new_tokens=body.max_tokens or 16,
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=body.logit_bias_ids,
        min_tokens=body.min_tokens,
        stop_token_ids=list(body.stop_token_ids or []),
        seed=None if body.seed is None else body.seed + choice,  # n choices must differ
        stop=body.stops,
        logprobs=body.logprobs,
    )


class LogProbBuilder:
    """Accumulates the legacy Completions `logprobs` object for one choice."""

    def __init__(self, model: BaseTextModel) -> None:
        self.model = model
        self.value = LogProbs()
        self.offset = 0

    def add(self, event: TokenEvent) -> LogProbs:
        text = self.model.token_text(event.token_id)
        step = LogProbs(
            tokens=[text],
            token_logprobs=[event.logprob or 0.0],
            top_logprobs=[{self.model.token_text(t): lp for t, lp in (event.top_logprobs or [])}],
            text_offset=[self.offset],
        )
        self.offset += len(text)
        for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            getattr(self.value, name).extend(getattr(step, name))
        return step


@router.post("/v1/completions", response_model=Completion, responses={**COMPLETIONS_SSE_200, **ERRORS})
async def completions(body: CompletionRequest, request: Request):  # type: ignore[no-untyped-def]
    body.refuse_unsupported()
    plane, caller = text_plane(request), caller_of(request, "openai")
    jobs = [(p, i) for p in body.prompts for i in range(body.n)]
    with openai_errors():  # validate and enqueue every choice before answering: errors are plain 4xx
        model, streams = plane.open_many(caller, [to_options(body, p, i) for p, i in jobs])
    completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    prompt_tokens = sum(s.prompt_tokens for s, (_, i) in zip(streams, jobs, strict=True) if i == 0)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = stream_chunks(streams, model, completion_id, created, body, prompt_tokens, include_usage)
        return StreamingResponse(chunks, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
    gathered = asyncio.gather(*(collect(s) for s in streams))
    try:
        results: list[Completed] = await until_done_or_disconnected(request, gathered)
    finally:
        for s in streams:
            s.cancel()  # no-op for finished ones; frees the slots of the others on any failure
    choices = []
    for index, done in enumerate(results):
        logprobs = None
        if body.logprobs is not None:
            builder = LogProbBuilder(model)
            for event in done.tokens:
                builder.add(event)
            logprobs = builder.value
        reason = FINISH[done.finish.reason]
        choices.append(CompletionChoice(index=index, text=done.text, logprobs=logprobs, finish_reason=reason))
    completion_tokens = sum(done.finish.completion_tokens for done in results)
    cached = sum(done.finish.cached_tokens for done, (_, i) in zip(results, jobs, strict=True) if i == 0)
    usage = CompletionUsage.of(prompt_tokens, completion_tokens, cached)
    return Completion(id=completion_id, created=created, model=model.name, choices=choices, usage=usage)


class CompletionChunks:
    """`text_completion` chunks (plain dicts: no model validation per token)."""

    def __init__(self, head: dict, model: BaseTextModel, choices: int, want_logprobs: bool) -> None:
        self.head = head
        self.builders = [LogProbBuilder(model) if want_logprobs else None for _ in range(choices)]

    def chunk(self, index: int, text: str, finish: str | None = None, logprobs: LogProbs | None = None) -> bytes:
        choice = {"index": index, "text": text, "logprobs": logprobs.model_dump() if logprobs else None}
        return sse.event({**self.head, "choices": [{**choice, "finish_reason": finish}]})

    def token(self, index: int, event: TokenEvent) -> bytes | None:
        builder = self.builders[index]
        logprobs = builder.add(event) if builder and event.token_id >= 0 else None
        return self.chunk(index, event.text, logprobs=logprobs) if event.text or logprobs else None

    def finish(self, index: int, reason: str) -> bytes:
        return self.chunk(index, "", reason)


def stream_chunks(
    streams: list[TextStream],
    model: BaseTextModel,
    completion_id: str,
    created: int,
    body: CompletionRequest,
    prompt_tokens: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The choices' events as `text_completion` chunks, one write per burst."""
    head = {"id": completion_id, "object": "text_completion", "created": created, "model": model.name}
    chunks = CompletionChunks(head, model, len(streams), body.logprobs is not None)
    return stream_sse(streams, head, chunks, prompt_tokens, include_usage, choices_per_prompt=body.n)
