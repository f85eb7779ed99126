"""POST /v1/chat/completions: the OpenAI Chat Completions API ⇄ the chat data plane.

Streaming follows OpenAI's shape: per choice a first chunk whose delta carries the role, then
content deltas, then a chunk with the finish reason and an empty delta; with
`stream_options.include_usage` every chunk carries `"usage": null` and a last chunk with
`"choices": []` carries the usage; then `data: [DONE]`. Chunks are plain dicts serialized
once (no model validation per token).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service.api.context import caller_of, chat_plane
from service.api.openai.chat_protocol import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChoiceLogprobs,
    MessageOut,
    TokenLogprob,
)
from service.api.openai.protocol import FINISH, CompletionUsage, openai_errors
from service.api.openai.streaming import stream_sse
from service.api.schemas import CHAT_SSE_200, ERRORS, TEXT
from service.dataplane.text import Completed, TextOptions, collect
from service.engine.request import TokenEvent
from service.engine.textgen import BaseTextModel, TextStream
from service.http import sse
from service.http.cancellation import until_done_or_disconnected

router = APIRouter(tags=[TEXT])


def to_options(body: ChatCompletionRequest, choice: int) -> TextOptions:
    max_tokens = body.max_completion_tokens or body.max_tokens
    return TextOptions(
        prompt="",  # the chat data plane renders the messages
        model=body.model,
        max_new_tokens=max_tokens,
        fit_to_context=max_tokens is None,
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
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        response_format=body.response_format.neutral() if body.response_format else None,
    )


def token_logprob(model: BaseTextModel, event: TokenEvent) -> dict[str, Any]:
    """OpenAI's per-token logprobs entry: the token, its log-probability, its bytes, the alternatives."""
    top = [
        {"token": model.token_text(t), "logprob": lp, "bytes": model.token_bytes(t)}
        for t, lp in event.top_logprobs or []
    ]
    token = event.token_id
    return {
        "token": model.token_text(token),
        "logprob": event.logprob,
        "bytes": model.token_bytes(token),
        "top_logprobs": top,
    }


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**CHAT_SSE_200, **ERRORS})
async def chat_completions(body: ChatCompletionRequest, request: Request):  # type: ignore[no-untyped-def]
    body.refuse_unsupported()
    plane, caller = chat_plane(request), caller_of(request, "openai")
    with openai_errors():  # validate and enqueue every choice before answering: errors are plain 4xx
        model, streams = plane.open_many(caller, body.chat_messages(), [to_options(body, i) for i in range(body.n)])
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    prompt_tokens = streams[0].prompt_tokens
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model.name}
        chunks = stream_chunks(streams, model, head, body.logprobs, prompt_tokens, include_usage)
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
        if body.logprobs:
            logprobs = ChoiceLogprobs(content=[TokenLogprob(**token_logprob(model, e)) for e in done.tokens])
        message = MessageOut(content=done.text)
        choices.append(
            ChatChoice(index=index, message=message, logprobs=logprobs, finish_reason=FINISH[done.finish.reason])
        )
    completion_tokens = sum(done.finish.completion_tokens for done in results)
    usage = CompletionUsage.of(prompt_tokens, completion_tokens, results[0].finish.cached_tokens)
    return ChatCompletion(id=completion_id, created=created, model=model.name, choices=choices, usage=usage)


class ChatChunks:
    """`chat.completion.chunk` deltas; with include_usage every chunk carries `"usage": null`."""

    def __init__(self, head: dict[str, Any], model: BaseTextModel, want_logprobs: bool, include_usage: bool) -> None:
        self.head, self.model, self.want_logprobs = head, model, want_logprobs
        self.usage_field = {"usage": None} if include_usage else {}

    def chunk(self, index: int, delta: dict, finish: str | None = None, logprobs: list | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": {"content": logprobs} if logprobs else None}
        return sse.event({**self.head, "choices": [{**choice, "finish_reason": finish}], **self.usage_field})

    def token(self, index: int, event: TokenEvent) -> bytes | None:
        logprobs = [token_logprob(self.model, event)] if self.want_logprobs and event.token_id >= 0 else None
        return self.chunk(index, {"content": event.text}, logprobs=logprobs) if event.text or logprobs else None

    def finish(self, index: int, reason: str) -> bytes:
        return self.chunk(index, {}, reason)


def stream_chunks(
    streams: list[TextStream],
    model: BaseTextModel,
    head: dict[str, Any],
    want_logprobs: bool,
    prompt_tokens: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The choices' events as chat chunks, one write per burst, after each choice's role delta.

    The choices share one prompt, so usage counts its cached tokens once (choice 0's)."""
    chunks = ChatChunks(head, model, want_logprobs, include_usage)
    roles = b"".join(chunks.chunk(index, {"role": "assistant", "content": ""}) for index in range(len(streams)))
    return stream_sse(streams, head, chunks, prompt_tokens, include_usage, len(streams), preamble=roles)
