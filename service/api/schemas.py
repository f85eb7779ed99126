"""Wire schemas for Kiln's own REST API (kept apart from serving logic)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.api.openai.chat_protocol import ResponseFormatIn
from service.dataplane.text import LIMITS

# Route tasks: the OpenAPI tag of every route and the `task` label of its request metrics.
TEXT = "text-generation"
VISION = "image-classification"
CONTROL = "control"


def bounds(name: str) -> dict[str, Any]:
    """The data plane's range for a field, so the schema documents what is enforced."""
    return LIMITS[name].field_kwargs()


class GenerateRequest(BaseModel):
    """POST /generate. Unset sampling fields fall back to the model's generation defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Model name; optional when one text model is loaded.")
    prompt: str = Field(..., description="Text to continue.")
    max_new_tokens: int | None = Field(
        None, **bounds("max_new_tokens"), description="Tokens to generate (<= KILN_MAX_NEW_TOKENS_LIMIT)."
    )
    temperature: float | None = Field(None, **bounds("temperature"), description="0 = greedy.")
    top_k: int | None = Field(None, **bounds("top_k"), description="0 = off.")
    top_p: float | None = Field(None, **bounds("top_p"), description="1 = off.")
    repetition_penalty: float | None = Field(None, **bounds("repetition_penalty"), description="1 = off.")
    stop: list[str] | None = Field(None, description="Stop strings; the text ends before the first one.")
    seed: int | None = Field(None, **bounds("seed"), description="Same seed, same sample.")
    stream: bool = Field(False, description="Server-Sent Events, one per text chunk, then a final event.")
    timeout_s: float | None = Field(None, **bounds("timeout_s"), description="Deadline; 504 or finish_reason timeout.")
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-sequence token.")
    min_p: float | None = Field(None, **bounds("min_p"), description="0 = off: keep p >= min_p x p(top token).")
    presence_penalty: float | None = Field(None, **bounds("presence_penalty"), description="OpenAI's; 0 = off.")
    frequency_penalty: float | None = Field(None, **bounds("frequency_penalty"), description="OpenAI's; 0 = off.")
    logit_bias: dict[str, float] | None = Field(None, description="Token id (as a string) -> bias, -100 to 100.")
    min_tokens: int | None = Field(None, **bounds("min_tokens"), description="No EOS or stop token before this.")
    stop_token_ids: list[int] | None = Field(None, description="Token ids that end generation (not in the text).")
    response_format: ResponseFormatIn | None = Field(
        None, description="Structured output: `json_object`, `json_schema` or `regex`, as OpenAI shapes it."
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(BaseModel):
    ttft_ms: float | None
    total_ms: float
    queue_ms: float
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache (not prefilled again)


class GenerateResponse(BaseModel):
    id: str
    model: str
    text: str
    finish_reason: str
    usage: Usage
    timings: Timings


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "kiln"
    kind: str
    ready: bool
    context_length: int | None = None


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


# OpenAPI declarations shared by the routes: every error status a route can answer, and the
# SSE body of streaming responses (schemathesis checks the live schema against real answers).
ERRORS: dict[int | str, dict] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 415, 429, 499, 500, 501, 503, 504)
}


def _object(*required: str) -> dict:
    return {"type": "object", "required": list(required)}


def sse_200(description: str, *payloads: dict, events: tuple[str, ...] = ("message",)) -> dict[int | str, dict]:
    """The 200 `text/event-stream` body, described one event at a time.

    Before OpenAPI 3.2 (FastAPI emits 3.1) the `schema` of an event-stream media type describes
    each event as parsed by an SSE client, `{event, data, id?, retry?}`, not the raw text;
    schemathesis validates every streamed event against it, so it must be exact. Every stream
    may end in an `error` event (service/http/sse.py) before `[DONE]`.
    """
    shapes = [*payloads, LATE_ERROR]
    json_data = {"type": "string", "contentMediaType": "application/json", "contentSchema": {"anyOf": shapes}}
    event = {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": [*events, "error"]},
            "data": {"anyOf": [{"const": "[DONE]"}, json_data]},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    }
    return {200: {"content": {"text/event-stream": {"schema": event}}, "description": description}}


LATE_ERROR = _object("error")  # `event: error`: generation failed after the response started

# /generate streams one event per text chunk, then `event: finish` (usage, timings), or
# `event: error` when generation failed after the first byte, then `data: [DONE]`.
GENERATE_SSE_200 = sse_200(
    "A JSON body, or with `stream: true` Server-Sent Events: text chunks, `event: finish`, `[DONE]`.",
    _object("id", "text", "token"),
    _object("id", "model", "finish_reason", "usage", "timings"),
    events=("message", "finish"),
)
# /v1/chat/completions streams OpenAI `chat.completion.chunk`s (the usage chunk has `choices: []`).
CHAT_SSE_200 = sse_200(
    "A JSON body, or with `stream: true` Server-Sent Events of `chat.completion.chunk`s, then `[DONE]`.",
    _object("id", "object", "created", "model", "choices"),
)
# /v1/completions streams OpenAI `text_completion` chunks, then `data: [DONE]`.
COMPLETIONS_SSE_200 = sse_200(
    "A JSON body, or with `stream: true` Server-Sent Events of `text_completion` chunks, then `[DONE]`.",
    _object("id", "object", "created", "model", "choices"),
)
