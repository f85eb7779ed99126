"""POST /tokenize and POST /detokenize, in vLLM's request and response shapes.

`/tokenize` takes a `prompt` (tokenized as generation would: BOS when the model wants one and
`add_special_tokens` is true) or chat `messages` (rendered with the model's template, whose
special tokens are not added a second time); the ids are exactly what a generation request
with the same input would prefill.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from service.api.context import caller_of, chat_plane, text_plane
from service.api.openai.chat_protocol import MessageIn, chat_messages
from service.api.schemas import ERRORS, TEXT
from service.errors import InvalidRequest

router = APIRouter(tags=[TEXT])


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | None = Field(None, description="Text; or give `messages` instead.")
    messages: list[MessageIn] | None = Field(None, description="A conversation, rendered with the chat template.")
    add_generation_prompt: bool = Field(True, description="With `messages`: end with the assistant's turn header.")
    add_special_tokens: bool | None = Field(
        None, description="Default true for `prompt` (BOS when the model wants one), false for `messages`."
    )
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    model = text_plane(request).model(caller_of(request, "http"), body.model)
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequest("give exactly one of `prompt` and `messages`", code="invalid_parameter", param="prompt")
    if body.messages is not None:
        text = chat_plane(request).render(model, chat_messages(body.messages), body.add_generation_prompt)
        ids = model.encode(text, add_special_tokens=bool(body.add_special_tokens))
    else:
        ids = model.encode(body.prompt or "", add_special_tokens=body.add_special_tokens is not False)
    strs = [model.token_text(t) for t in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=model.context_length, tokens=ids, token_strs=strs)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    model = text_plane(request).model(caller_of(request, "http"), body.model)
    vocab = model.manifest.vocab_size
    bad = [t for t in body.tokens if not 0 <= t < vocab]
    if bad:
        raise InvalidRequest(
            f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})", code="invalid_parameter", param="tokens"
        )
    return DetokenizeResponse(prompt=model.decode(body.tokens, skip_special_tokens=False))  # /tokenize's inverse
