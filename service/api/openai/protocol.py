"""OpenAI Completions wire schema (the subset Kiln serves; the rest is refused, never ignored)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, ConfigDict, Field

from service.errors import InvalidRequest, KilnError

# Kiln's finish reasons as OpenAI names them.
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "timeout": "length"}
# The data plane's field names where OpenAI's differ (an error's `param` names the wire field).
PARAM_NAMES = {"max_new_tokens": "max_tokens"}


def token_bias(bias: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's `logit_bias` (JSON object keys are strings) as token id -> bias."""
    try:
        return {int(k): float(v) for k, v in (bias or {}).items()}
    except ValueError as exc:
        raise InvalidRequest("logit_bias keys must be token ids", code="invalid_parameter", param="logit_bias") from exc


@contextmanager
def openai_errors() -> Iterator[None]:
    """Errors raised inside name OpenAI's request fields in `param`."""
    try:
        yield
    except KilnError as exc:
        exc.param = PARAM_NAMES.get(exc.param or "", exc.param)
        raise


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    user: str | None = None
    # Accepted only at their neutral values: anything else is refused with a clear error.
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    # Extensions, as vLLM names them.
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = None

    def refuse_unsupported(self) -> None:
        unsupported = {
            "echo": self.echo,
            "suffix": self.suffix is not None,
            "best_of": self.best_of not in (None, 1, self.n),
        }
        for name, used in unsupported.items():
            if used:
                raise InvalidRequest(f"`{name}` is not supported by Kiln", code="unsupported_parameter", param=name)
        if not isinstance(self.prompt, str) and not all(isinstance(p, str) for p in self.prompt):
            raise InvalidRequest(
                "token-id prompts are not supported; send text", code="unsupported_parameter", param="prompt"
            )
        if not self.prompts:
            raise InvalidRequest("`prompt` must hold at least one prompt", code="empty_prompt", param="prompt")

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)  # type: ignore[arg-type]

    @property
    def logit_bias_ids(self) -> dict[int, float]:
        return token_bias(self.logit_bias)

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class LogProbs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: LogProbs | None = None
    finish_reason: str | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> CompletionUsage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )


class Completion(BaseModel):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
