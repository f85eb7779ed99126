"""What flows between the transports and the engine: a request in, events out.

The engine thread never touches asyncio objects directly; it hands events to the
request's `emit` callback, which the transport makes thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.engine.constraint import Constraint
from service.engine.sampling import SamplingParams
from service.errors import KilnError


@dataclass
class TokenEvent:
    """One generated token. `text` may be empty while held back (partial UTF-8, possible stop string)."""

    text: str
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class FinishEvent:
    reason: str  # "length" | "stop" | "eos" | "timeout" | "cancelled" | "error"
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    total_s: float
    queue_s: float
    message: str = ""
    error: KilnError | None = None  # reason "error": what a non-streaming caller raises (else inference_failed)
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache


Event = TokenEvent | FinishEvent


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop: list[str]
    emit: Callable[[Event], None]
    deadline: float | None = None  # time.monotonic() value
    ignore_eos: bool = False
    logprobs: int | None = None  # alternatives to report per token (None = no logprobs)
    min_tokens: int = 0  # end-of-sequence and stop token ids are banned before this many tokens
    stop_token_ids: frozenset[int] = frozenset()  # end the sequence (finish reason "stop"), not emitted
    constraint: Constraint | None = None  # structured output: the allowed next tokens
    tenant: str = ""  # whose cached prefixes this request may reuse (the API key's fingerprint)
    protocol: str = "http"
    created: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Safe from any thread; the engine frees the slot at its next step."""
        self.cancelled.set()
