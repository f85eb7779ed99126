"""The SSE loop the OpenAI streaming routes share: choices' bursts in, `data:` writes out.

Completions and Chat Completions differ only in how a token or a finish becomes a chunk; the
rest is one contract kept in one place: an engine error ends the stream with an error event
and `data: [DONE]`, each choice's finish is counted into the usage, and with
`stream_options.include_usage` a last chunk with `"choices": []` carries it before `[DONE]`.
One write per burst, so a burst's chunks leave together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from service.api.openai.merge import merged_bursts
from service.api.openai.protocol import FINISH, CompletionUsage
from service.engine.request import FinishEvent, TokenEvent
from service.engine.textgen import TextStream
from service.errors import KilnError
from service.http import sse


class ChunkBuilder(Protocol):
    """A route's chunk shape: `text_completion` choices or `chat.completion.chunk` deltas."""

    def token(self, index: int, event: TokenEvent) -> bytes | None:
        """The chunk for one token of choice `index`, or None when it carries nothing to send."""
        ...

    def finish(self, index: int, reason: str) -> bytes:
        """The chunk that ends choice `index` with an OpenAI finish reason."""
        ...


async def stream_sse(
    streams: list[TextStream],
    head: dict[str, Any],
    chunks: ChunkBuilder,
    prompt_tokens: int,
    include_usage: bool,
    choices_per_prompt: int,
    preamble: bytes = b"",
) -> AsyncIterator[bytes]:
    """The choices' events as SSE writes; `preamble` (if any) is the first write.

    Choice i answers prompt i // choices_per_prompt, and usage counts each prompt's cached
    tokens once (from its first choice), as the non-streaming answer does.
    """
    remaining, completion_tokens, cached = len(streams), 0, 0
    try:
        if preamble:
            yield preamble
        async for burst in merged_bursts(streams):
            out: list[bytes] = []
            for index, event in burst:
                if isinstance(event, FinishEvent):
                    if event.reason == "error":
                        error = event.error or KilnError(event.message or "inference failed", code="inference_failed")
                        yield b"".join([*out, sse.error_event(error), sse.DONE])
                        return
                    remaining -= 1
                    completion_tokens += event.completion_tokens
                    cached += event.cached_tokens if index % choices_per_prompt == 0 else 0
                    out.append(chunks.finish(index, FINISH.get(event.reason, event.reason)))
                    continue
                chunk = chunks.token(index, event)
                if chunk is not None:
                    out.append(chunk)
            if not remaining:
                if include_usage:
                    usage = CompletionUsage.of(prompt_tokens, completion_tokens, cached).model_dump()
                    out.append(sse.event({**head, "choices": [], "usage": usage}))
                out.append(sse.DONE)
            if out:
                yield b"".join(out)
            if not remaining:
                return
    finally:
        for stream in streams:
            stream.cancel()
