"""A served text model: tokenizer + engine, and the checks that depend on the model.

`BaseTextModel` holds what every backend shares (tokenizer, prompt checks); `TextModel` runs
the engine in-process, `service.backends.triton_lm.TritonTextModel` streams the same events
from Kiln's engine inside Triton. Both hand out `TextStream`s. Defaults, limits, entitlement
and metrics are the data plane's (service/dataplane/text.py); transports only translate.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from tokenizers import Tokenizer

from contracts.manifest import TextManifest
from service.chat_template import ChatTemplate, TemplateError, end_of_turn_ids, load_template
from service.engine.build import build_text_engine
from service.engine.observer import EngineObserver
from service.engine.request import Event, FinishEvent, GenerationRequest
from service.engine.sampling import SamplingParams
from service.engine.token_bytes import TokenBytes
from service.errors import InvalidRequest, PromptTooLong
from service.settings import Settings
from service.structured import Grammar, StructuredOutputs

log = logging.getLogger("kiln.textgen")


@dataclass
class GenerateParams:
    """A request with defaults and limits applied (the data plane builds it)."""

    prompt: str
    max_new_tokens: int
    sampling: SamplingParams
    stop: list[str]
    timeout_s: float | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    min_tokens: int = 0
    stop_token_ids: frozenset[int] = frozenset()
    grammar: Grammar | None = None  # structured output: each sequence gets its own matcher
    add_special_tokens: bool = True  # False: the prompt already holds them (a rendered chat template)
    fit_to_context: bool = False  # max_new_tokens is a ceiling: stop where the context ends instead of refusing
    tenant: str = ""  # whose cached prefixes it may reuse (set by the data plane from the caller)


class TextStream(Protocol):
    """One request's events, whatever runs it: tokens, then exactly one FinishEvent."""

    prompt_tokens: int

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def bursts(self) -> AsyncIterator[list[Event]]:
        """The same events, grouped: everything already delivered comes in one list, so a
        transport writes a client's pending tokens in one send instead of one per token."""
        ...

    def cancel(self) -> None:
        """Stop generating and free the slot (safe from any thread, idempotent)."""
        ...


class EventStream:
    """The in-process TextStream; closing it early cancels the sequence."""

    def __init__(self, req: GenerationRequest, queue: asyncio.Queue[Event]) -> None:
        self.request = req
        self._queue = queue
        self.prompt_tokens = len(req.prompt_ids)

    def cancel(self) -> None:
        self.request.cancel()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        async for burst in self.bursts():
            for event in burst:
                yield event

    async def bursts(self) -> AsyncIterator[list[Event]]:
        try:
            while True:
                burst = [await self._queue.get()]
                while not self._queue.empty():
                    burst.append(self._queue.get_nowait())
                yield burst
                if isinstance(burst[-1], FinishEvent):
                    return
        finally:
            self.request.cancel()  # no-op once finished; frees the slot if the client left


class LoopOutbox:
    """Hands engine events to an event loop with one wake-up per burst, not one per event.

    The engine thread emits an event per sequence per step. Waking the loop for each one (a
    self-pipe write, a loop iteration) spends CPU that the next decode step competes for on a
    small machine, and with 8 streams that is 8 wake-ups a step. Here the first event of a
    burst schedules a single drain; events that arrive before it runs ride along, in order.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Event], Event]] = []

    def post(self, queue: asyncio.Queue[Event], event: Event) -> None:
        with self._lock:
            first = not self._pending
            self._pending.append((queue, event))
        if first:
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody is left to read these
                with self._lock:
                    self._pending.clear()
                raise

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, event in pending:
            queue.put_nowait(event)


class BaseTextModel:
    """Tokenizer and prompt checks; subclasses provide `open_stream`."""

    kind = TextManifest.kind

    def __init__(self, manifest: TextManifest, settings: Settings) -> None:
        self.manifest = manifest
        self.name = manifest.name
        self.settings = settings
        self.tokenizer = Tokenizer.from_file(str(manifest.path(manifest.tokenizer)))
        entry_template = manifest.path(manifest.chat_template) if manifest.chat_template else None
        self.chat_template: ChatTemplate | None = None
        self.chat_template_error = ""  # why a template that exists cannot be used
        try:
            self.chat_template = load_template(
                settings.chat_template, entry_template, settings.default_chat_template, manifest.special_tokens
            )
        except (TemplateError, OSError) as exc:
            self.chat_template_error = str(exc)
            log.error("%s: %s", manifest.name, exc)
        # A chat turn ends at EOS or at the template's end-of-turn tokens (<|im_end|>, <|eot_id|>).
        self.end_of_turn_ids = (
            end_of_turn_ids(self.chat_template, self.tokenizer) if self.chat_template else frozenset()
        )

    @property
    def context_length(self) -> int:
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        return True

    @property
    def unavailable_reason(self) -> str | None:
        return None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; BOS first when the model wants one and the text does not carry it."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [self.manifest.bos_token_id, *ids] if self.manifest.add_bos and add_special_tokens else ids

    @cached_property
    def structured(self) -> StructuredOutputs:
        """Structured outputs for this model's vocabulary (llguidance's tokenizer is built on first use)."""
        return StructuredOutputs(self.tokenizer.to_str(), self.manifest.vocab_size, self.manifest.eos_token_ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """One token as text, special tokens included (logprobs name tokens this way)."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    @cached_property
    def token_bytes(self) -> TokenBytes:
        """The bytes a token stands for (OpenAI chat logprobs' `bytes`)."""
        return TokenBytes(self.tokenizer)

    def validate(self, params: GenerateParams) -> list[int]:
        """Check limits that depend on the model; return the prompt's token ids."""
        s = self.settings
        if not params.prompt:
            raise InvalidRequest("prompt must not be empty", code="empty_prompt")
        if len(params.prompt) > s.max_prompt_chars:
            raise PromptTooLong(
                f"prompt has {len(params.prompt)} characters; the limit is {s.max_prompt_chars} (KILN_MAX_PROMPT_CHARS)"
            )
        for text, what in ((params.prompt, "prompt"), *((stop, "stop string") for stop in params.stop)):
            if not is_valid_unicode(text):
                raise InvalidRequest(
                    f"{what} is not valid Unicode (it contains a lone surrogate such as \\ud800)",
                    code="invalid_prompt" if what == "prompt" else "invalid_stop",
                )
        ids = self.encode(params.prompt, params.add_special_tokens)
        if params.fit_to_context and len(ids) < self.context_length:
            params.max_new_tokens = max(
                min(params.max_new_tokens, self.context_length - len(ids)), params.min_tokens, 1
            )
        budget = self.context_length - params.max_new_tokens
        if len(ids) > budget:
            raise PromptTooLong(
                f"prompt is {len(ids)} tokens but the context is {self.context_length} tokens and "
                f"max_new_tokens is {params.max_new_tokens}: at most {max(budget, 0)} prompt tokens fit"
            )
        return ids

    def open_stream(self, params: GenerateParams, protocol: str = "http") -> TextStream:
        raise NotImplementedError

    def begin_drain(self) -> None: ...

    @property
    def busy(self) -> int:
        return 0

    def start(self) -> None: ...

    def close(self) -> None: ...


class TextModel(BaseTextModel):
    """In-process: ONNX Runtime runner + continuous-batching engine thread."""

    def __init__(self, manifest: TextManifest, settings: Settings, observer: EngineObserver | None = None) -> None:
        super().__init__(manifest, settings)
        self._outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopOutbox] = weakref.WeakKeyDictionary()
        config = settings.engine_config()
        self.graph = manifest.graph(config.lm_variant)
        self.engine = build_text_engine(manifest, config, self.decode, observer)
        self.runner = self.engine.runner

    @property
    def context_length(self) -> int:
        return self.runner.max_seq_len

    def start(self) -> None:
        self.engine.start()

    def open_stream(self, params: GenerateParams, protocol: str = "http") -> EventStream:
        """Validate and enqueue now (errors surface before any response starts), stream later."""
        prompt_ids = self.validate(params)
        outbox = self._outbox(asyncio.get_running_loop())
        queue: asyncio.Queue[Event] = asyncio.Queue()
        timeout = params.timeout_s if params.timeout_s is not None else self.settings.default_timeout_s
        req = GenerationRequest(
            prompt_ids=prompt_ids,
            max_new_tokens=params.max_new_tokens,
            sampling=params.sampling,
            stop=params.stop,
            emit=lambda ev: outbox.post(queue, ev),
            deadline=None if timeout is None else time.monotonic() + timeout,
            ignore_eos=params.ignore_eos,
            logprobs=params.logprobs,
            min_tokens=params.min_tokens,
            stop_token_ids=params.stop_token_ids,
            constraint=params.grammar.matcher() if params.grammar is not None else None,
            tenant=params.tenant,
            protocol=protocol,
        )
        self.engine.submit(req)
        return EventStream(req, queue)

    def _outbox(self, loop: asyncio.AbstractEventLoop) -> LoopOutbox:
        outbox = self._outboxes.get(loop)
        if outbox is None:
            outbox = self._outboxes[loop] = LoopOutbox(loop)
        return outbox

    def begin_drain(self) -> None:
        self.engine.begin_drain()

    @property
    def busy(self) -> int:
        return self.engine.busy

    def close(self) -> None:
        self.engine.stop()


def is_valid_unicode(text: str) -> bool:
    """False for strings JSON can carry but UTF-8 cannot: lone surrogates (\\ud800...)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
