"""Wire schemas for Kiln's own REST API (kept apart from serving logic)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GenerateRequest(BaseModel):
    """POST /generate. Unset sampling fields fall back to the model's generation defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Model name; optional when one text model is loaded.")
    prompt: str = Field(..., description="Text to continue.")
    max_new_tokens: int | None = Field(None, ge=1, description="Tokens to generate (<= KILN_MAX_NEW_TOKENS_LIMIT).")
    temperature: float | None = Field(None, ge=0.0, le=5.0, description="0 = greedy.")
    top_k: int | None = Field(None, ge=0, description="0 = off.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="1 = off.")
    repetition_penalty: float | None = Field(None, ge=0.01, le=10.0, description="1 = off; 0.01 to 10.")
    stop: list[str] | None = Field(None, description="Stop strings; the text ends before the first one.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Same seed, same sample.")
    stream: bool = Field(False, description="Server-Sent Events, one per text chunk, then a final event.")
    timeout_s: float | None = Field(None, gt=0.0, le=3600.0, description="Deadline; 504 or finish_reason timeout.")
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-sequence token.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(BaseModel):
    ttft_ms: float | None
    total_ms: float
    queue_ms: float


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
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 415, 429, 500, 501, 503, 504)
}
SSE_200: dict[int | str, dict] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}, "description": "with `stream: true`"}}}
}
