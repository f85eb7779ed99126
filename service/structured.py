"""Structured outputs (`response_format`): JSON object, JSON schema and regex, through llguidance.

llguidance was chosen by measurement (docs/structured-outputs.md): it needs neither torch nor
transformers, computes a 32k-vocabulary mask in about 3 µs, releases the GIL while it does
(so the engine computes masks during the decode step), refuses what it cannot enforce with a
message instead of silently weakening the schema, and bounds its work per step so a
pathological schema cannot hang a request.

`StructuredOutputs` belongs to one model (it holds the tokenizer llguidance needs, built on
first use: ~0.3 s for 32k tokens); `compile` turns a request's format into a `Grammar`, and
every sequence of the request gets its own matcher from it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import InvalidRequest

JSON_WHITESPACE = False  # compact JSON: a model cannot loop on whitespace
FORMATS = ("text", "json_object", "json_schema", "regex")


@dataclass(frozen=True)
class ResponseFormat:
    """A request's output format in no transport's terms."""

    type: str = "text"
    schema: dict[str, Any] | None = None  # json_schema
    strict: bool = False  # json_schema: refuse (not ignore) keywords the engine cannot enforce
    regex: str | None = None
    name: str = ""

    @property
    def constrained(self) -> bool:
        return self.type != "text"


@dataclass
class Grammar:
    """A compiled format; `matcher()` hands out one independent matcher per sequence."""

    owner: StructuredOutputs
    source: str
    text: str = field(repr=False)

    def matcher(self) -> LlgConstraint:
        return LlgConstraint(self.owner.new_matcher(self.text), self.owner.vocab_size)


class StructuredOutputs:
    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: tuple[int, ...]) -> None:
        self._tokenizer_json = tokenizer_json
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _llg_tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                import llguidance as llg

                self._tokenizer = llg.LLTokenizer(
                    self._tokenizer_json, n_vocab=self.vocab_size, eos_token=list(self.eos_token_ids)
                )
            return self._tokenizer

    def compile(self, fmt: ResponseFormat) -> Grammar:
        """The format's grammar, checked now: a format the engine cannot enforce is a 400."""
        import llguidance as llg

        try:
            if fmt.type == "json_object":
                text = llg.LLMatcher.grammar_from_json_schema(
                    {"type": "object"}, overrides={"whitespace_flexible": JSON_WHITESPACE}
                )
            elif fmt.type == "json_schema":
                text = llg.LLMatcher.grammar_from_json_schema(
                    fmt.schema or {}, overrides={"whitespace_flexible": JSON_WHITESPACE, "lenient": not fmt.strict}
                )
            elif fmt.type == "regex":
                text = llg.LLMatcher.grammar_from_regex(fmt.regex or "")
            else:
                raise ValueError(f"unknown response_format type {fmt.type!r} (one of {list(FORMATS)})")
        except (ValueError, TypeError, RuntimeError) as exc:
            raise _invalid(exc) from exc
        grammar = Grammar(self, fmt.type, text)
        probe = self.new_matcher(text)  # errors (unsupported keywords, bad patterns) show here
        del probe
        return grammar

    def new_matcher(self, text: str) -> Any:
        import llguidance as llg

        matcher = llg.LLMatcher(self._llg_tokenizer(), text, log_level=0, limits=llg.LLParserLimits())
        if matcher.is_error():
            raise _invalid(matcher.get_error())
        return matcher


def _invalid(exc: object) -> InvalidRequest:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InvalidRequest(
        f"response_format cannot be enforced: {reason[:500]}", code="invalid_response_format", param="response_format"
    )


class LlgConstraint:
    """One sequence's matcher (the engine's Constraint, service/engine/constraint.py)."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._m = matcher
        self._vocab = vocab_size
        self._bits = np.zeros((1, (vocab_size + 31) // 32), np.int32)
        self._allowed: np.ndarray | None = None
        self._refused: str | None = None

    def prepare(self) -> None:
        if self._allowed is None:
            import llguidance.numpy as llnp

            llnp.fill_next_token_bitmask(self._m, self._bits, 0)  # releases the GIL
            bits = np.unpackbits(self._bits[0].view(np.uint8), bitorder="little", count=self._vocab)
            self._allowed = bits.view(bool)

    def allowed(self) -> np.ndarray:
        self.prepare()
        assert self._allowed is not None
        return self._allowed

    def advance(self, token: int) -> None:
        self._allowed = None
        if not self._m.consume_token(token) and self._refused is None:
            self._refused = f"token {token} was refused"

    @property
    def done(self) -> bool:
        return bool(self._m.is_stopped())

    @property
    def error(self) -> str | None:
        if self._refused is None and self._m.is_error():
            return str(self._m.get_error()).splitlines()[0][:300]
        return self._refused
