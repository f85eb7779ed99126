"""OpenAI Chat Completions wire schema (what Kiln serves; the rest is refused, never ignored)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.openai.protocol import CompletionUsage, StreamOptions, token_bias
from service.dataplane.chat import ChatMessage
from service.errors import InvalidRequest
from service.structured import ResponseFormat


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema", "regex"]
    json_schema: JsonSchemaSpec | None = None
    regex: str | None = Field(None, description="Kiln extension: a regular expression the output must match.")

    def neutral(self) -> ResponseFormat:
        if self.type == "json_schema":
            if self.json_schema is None:
                raise InvalidRequest(
                    "response_format type json_schema needs `json_schema`",
                    code="invalid_response_format",
                    param="response_format",
                )
            spec = self.json_schema
            return ResponseFormat("json_schema", schema=spec.schema_, strict=bool(spec.strict), name=spec.name)
        if self.type == "regex" and not self.regex:
            raise InvalidRequest(
                "response_format type regex needs `regex`", code="invalid_response_format", param="response_format"
            )
        return ResponseFormat(self.type, regex=self.regex)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[MessageIn]
    max_tokens: int | None = Field(None, ge=1, description="Deprecated by OpenAI for max_completion_tokens.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Unset: as many as the context allows.")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormatIn | None = None
    user: str | None = None
    # Refused unless neutral (Kiln does not call tools).
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    # Extensions, as vLLM names them.
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = None

    def refuse_unsupported(self) -> None:
        if self.tools or (self.tool_choice not in (None, "none")) or self.parallel_tool_calls:
            name = (
                "tools"
                if self.tools
                else "tool_choice"
                if self.tool_choice not in (None, "none")
                else "parallel_tool_calls"
            )
            raise InvalidRequest("tool calling is not supported by Kiln", code="unsupported_parameter", param=name)
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest(
                "`top_logprobs` needs `logprobs: true`", code="invalid_parameter", param="top_logprobs"
            )

    def chat_messages(self) -> list[ChatMessage]:
        return chat_messages(self.messages)

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def logit_bias_ids(self) -> dict[int, float]:
        return token_bias(self.logit_bias)


def chat_messages(messages: list[MessageIn]) -> list[ChatMessage]:
    """Wire messages as the chat data plane takes them; tool turns are refused by name."""
    out = []
    for i, m in enumerate(messages):
        if m.role == "tool" or m.tool_calls or m.tool_call_id:
            raise InvalidRequest(
                f"messages[{i}]: tool messages and tool calls are not supported by Kiln",
                code="unsupported_parameter",
                param="messages",
            )
        out.append(ChatMessage(m.role, _text(m.content, i), m.name))
    return out


def _text(content: str | list[ContentPart] | None, index: int) -> str:
    """A message's text: a string, or its text parts joined by newlines (as vLLM does)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise InvalidRequest(
                f"messages[{index}]: content parts of type {part.type!r} are not supported (text only)",
                code="unsupported_parameter",
                param="messages",
            )
        texts.append(part.text)
    return "\n".join(texts)


class MessageOut(BaseModel):
    role: str = "assistant"
    content: str | None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class ChatChoice(BaseModel):
    index: int
    message: MessageOut
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
