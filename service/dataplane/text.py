"""Text generation for every transport: neutral options in, a stream of engine events out.

`/generate`, `/v1/completions` and gRPC build `TextOptions` from their wire schema (None means
"the model's default"), then call `open` (streaming) or `complete`. This module resolves the
model, checks the caller's entitlement, applies the model's defaults and the server's limits
(`LIMITS` is the one table of ranges; the wire schemas document it), counts prompt tokens and
submits. Handlers then only translate events into their wire format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.dataplane.caller import Caller
from service.engine.request import FinishEvent, TokenEvent
from service.engine.sampling import SamplingParams
from service.engine.textgen import BaseTextModel, GenerateParams, TextStream
from service.errors import DeadlineExceeded, InvalidRequest, KilnError
from service.metrics import Metrics
from service.structured import Grammar, ResponseFormat


@dataclass(frozen=True)
class Bound:
    """An inclusive (ge/le) or exclusive (gt) numeric range of a request field."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def field_kwargs(self) -> dict[str, float]:
        """For pydantic `Field(...)`, so wire schemas document the same range."""
        return {k: v for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le)) if v is not None}

    def check(self, name: str, value: float | None) -> None:
        if value is None:
            return
        low_ok = (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
        if not low_ok or (self.le is not None and value > self.le):
            parts = [f">= {self.ge}" if self.ge is not None else "", f"> {self.gt}" if self.gt is not None else ""]
            parts.append(f"<= {self.le}" if self.le is not None else "")
            raise InvalidRequest(
                f"`{name}` must be {' and '.join(p for p in parts if p)} (got {value})",
                code="invalid_parameter",
                param=name,
            )


LIMITS: dict[str, Bound] = {
    "max_new_tokens": Bound(ge=1),
    "temperature": Bound(ge=0.0, le=5.0),
    "top_k": Bound(ge=0),
    "top_p": Bound(gt=0.0, le=1.0),
    "min_p": Bound(ge=0.0, le=1.0),
    "repetition_penalty": Bound(ge=0.01, le=10.0),
    "presence_penalty": Bound(ge=-2.0, le=2.0),
    "frequency_penalty": Bound(ge=-2.0, le=2.0),
    "min_tokens": Bound(ge=0),
    "seed": Bound(ge=0, le=2**63 - 1),
    "timeout_s": Bound(gt=0.0, le=3600.0),
    "logprobs": Bound(ge=0, le=20),
}
MAX_STOP_CHARS = 256
LOGIT_BIAS = Bound(ge=-100.0, le=100.0)


@dataclass
class TextOptions:
    """One generation request in no transport's terms. None: the model's generation default."""

    prompt: str
    model: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    timeout_s: float | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # alternatives per token; None = no logprobs
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    min_tokens: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    response_format: ResponseFormat | None = None
    add_special_tokens: bool = True  # False: the prompt carries them already (a rendered chat)
    fit_to_context: bool = False  # max_new_tokens unset: as many as the context holds (<= the server limit)


@dataclass
class Completed:
    """A non-streaming result: the text, the finish event and (when asked) the token events."""

    text: str
    finish: FinishEvent
    tokens: list[TokenEvent]


class TextRegistry(Protocol):
    def text_model(self, name: str | None) -> BaseTextModel: ...


class TextDataPlane:
    def __init__(self, registry: TextRegistry, metrics: Metrics) -> None:
        self.registry = registry
        self.metrics = metrics

    def model(self, caller: Caller, name: str | None) -> BaseTextModel:
        """The model a request names (or the only one), if the caller may use it."""
        model = self.registry.text_model(name)
        caller.authorize(model.name)
        return model

    def resolve(self, model: BaseTextModel, options: TextOptions) -> GenerateParams:
        """Apply the model's defaults and the server's limits; InvalidRequest names the field."""
        for name, bound in LIMITS.items():
            bound.check(name, getattr(options, name))
        s, d = model.settings, model.manifest.generation_defaults

        def pick(name: str, fallback: float) -> float:
            value = getattr(options, name)
            return value if value is not None else d.get(name, fallback)

        fit = options.fit_to_context and options.max_new_tokens is None
        max_new = s.max_new_tokens_limit if fit else int(pick("max_new_tokens", 64))
        if max_new > s.max_new_tokens_limit:
            raise InvalidRequest(
                f"max_new_tokens={max_new} exceeds the limit {s.max_new_tokens_limit} (KILN_MAX_NEW_TOKENS_LIMIT)",
                code="max_new_tokens_too_large",
                param="max_new_tokens",
            )
        if len(options.stop) > s.max_stop_strings:
            raise InvalidRequest(
                f"at most {s.max_stop_strings} stop strings (KILN_MAX_STOP_STRINGS)", code="too_many_stop", param="stop"
            )
        if any(not x or len(x) > MAX_STOP_CHARS for x in options.stop):
            raise InvalidRequest(
                f"stop strings must be 1 to {MAX_STOP_CHARS} characters", code="invalid_stop", param="stop"
            )
        top_k = int(pick("top_k", 0))
        if top_k > model.manifest.vocab_size:
            raise InvalidRequest(
                f"top_k={top_k} exceeds the vocabulary size {model.manifest.vocab_size}", param="top_k"
            )
        sampling = SamplingParams(
            temperature=float(pick("temperature", 0.0)),
            top_k=top_k,
            top_p=float(pick("top_p", 1.0)),
            min_p=float(pick("min_p", 0.0)),
            repetition_penalty=float(pick("repetition_penalty", 1.0)),
            presence_penalty=float(pick("presence_penalty", 0.0)),
            frequency_penalty=float(pick("frequency_penalty", 0.0)),
            logit_bias=self._logit_bias(model, options.logit_bias),
            seed=options.seed,
        )
        min_tokens = int(pick("min_tokens", 0))
        if min_tokens > max_new:
            raise InvalidRequest(
                f"min_tokens={min_tokens} exceeds max_new_tokens={max_new}",
                code="invalid_parameter",
                param="min_tokens",
            )
        return GenerateParams(
            prompt=options.prompt,
            max_new_tokens=max_new,
            sampling=sampling,
            stop=list(options.stop),
            timeout_s=options.timeout_s,
            ignore_eos=options.ignore_eos,
            logprobs=options.logprobs,
            min_tokens=min_tokens,
            stop_token_ids=self._token_ids(model, options.stop_token_ids, "stop_token_ids", s.max_stop_token_ids),
            grammar=self._grammar(model, options.response_format),
            add_special_tokens=options.add_special_tokens,
            fit_to_context=fit,
        )

    @staticmethod
    def _token_ids(model: BaseTextModel, ids: Sequence[int], param: str, most: int) -> frozenset[int]:
        vocab = model.manifest.vocab_size
        if len(ids) > most:
            raise InvalidRequest(f"`{param}` takes at most {most} token ids", code="invalid_parameter", param=param)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequest(
                f"`{param}`: token ids {bad[:5]} are outside the vocabulary [0, {vocab})",
                code="invalid_parameter",
                param=param,
            )
        return frozenset(int(t) for t in ids)

    def _logit_bias(self, model: BaseTextModel, bias: dict[int, float]) -> tuple[tuple[int, float], ...]:
        ids = self._token_ids(model, list(bias), "logit_bias", model.settings.max_logit_bias)
        for value in bias.values():
            LOGIT_BIAS.check("logit_bias", value)
        return tuple(sorted((t, float(bias[t])) for t in ids))

    @staticmethod
    def _grammar(model: BaseTextModel, fmt: ResponseFormat | None) -> Grammar | None:
        if fmt is None or not fmt.constrained:
            return None
        return model.structured.compile(fmt)

    def open(self, caller: Caller, options: TextOptions) -> tuple[BaseTextModel, TextStream]:
        """Validate and enqueue now (errors surface before any response starts); stream later."""
        model, [stream] = self.open_many(caller, [options])
        return model, stream

    def open_many(self, caller: Caller, batch: Sequence[TextOptions]) -> tuple[BaseTextModel, list[TextStream]]:
        """Several sequences of one model (prompts x choices): all are enqueued, or none."""
        if not batch:
            raise InvalidRequest("the request holds no prompt", code="empty_prompt", param="prompt")
        model = self.model(caller, batch[0].model)
        return model, self.submit(caller, model, [self.resolve(model, o) for o in batch])

    def submit(self, caller: Caller, model: BaseTextModel, batch: Sequence[GenerateParams]) -> list[TextStream]:
        """Enqueue resolved requests on `model`, all or none; count their prompt tokens."""
        streams: list[TextStream] = []
        try:
            for p in batch:
                p.tenant = caller.tenant
                streams.append(model.open_stream(p, caller.protocol))
        except KilnError:
            for opened in streams:
                opened.cancel()
            raise
        self.metrics.prompt_tokens.labels(model.name, caller.protocol).inc(sum(s.prompt_tokens for s in streams))
        return streams

    async def complete(self, caller: Caller, options: TextOptions) -> tuple[BaseTextModel, Completed]:
        model, stream = self.open(caller, options)
        return model, await collect(stream, options.timeout_s)


async def collect(stream: TextStream, timeout_s: float | None = None) -> Completed:
    """Drain a stream into a result; a deadline miss is a 504, an engine failure its own error.
    Cancelling the awaiting task (a client that went away) cancels the sequence."""
    parts: list[str] = []
    tokens: list[TokenEvent] = []
    try:
        async for event in stream:
            if isinstance(event, FinishEvent):
                if event.reason == "timeout":
                    raise DeadlineExceeded(f"generation did not finish within timeout_s={timeout_s}")
                if event.reason == "error":
                    raise event.error or KilnError(event.message or "inference failed", code="inference_failed")
                return Completed("".join(parts), event, tokens)
            parts.append(event.text)
            if event.token_id >= 0:
                tokens.append(event)
    except asyncio.CancelledError:
        stream.cancel()
        raise
    raise RuntimeError("stream ended without a finish event")
