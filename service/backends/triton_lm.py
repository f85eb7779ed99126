"""A text model whose engine runs inside Triton (KILN_BACKEND=triton).

The gateway keeps what is cheap and per-request: tokenization, validation, the limits, stop
strings and UTF-8-safe detokenization (the same StreamDecoder as in-process). Prompt token ids
and sampling parameters go to `<name>-triton`, the decoupled python-backend model written by
`kiln export --target triton`, which runs Kiln's GenerationEngine (continuous batching, KV
cache) and streams one response per token. The events this class yields are the in-process
TextModel's, so /generate, SSE, the OpenAI routes and gRPC use it unchanged.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from contracts.manifest import TextManifest
from contracts.triton import LM_INPUT, triton_lm_name
from service.backends.triton_client import TritonConnection, TritonModelHandle
from service.engine.detokenize import StreamDecoder
from service.engine.observer import EngineObserver
from service.engine.request import Event, FinishEvent, TokenEvent
from service.engine.textgen import BaseTextModel, GenerateParams
from service.errors import KilnError, NotSupported, Unavailable
from service.settings import Settings


class _Handle:
    """Set by `cancel()` from any thread; the stream stops and cancels its Triton call."""

    def __init__(self) -> None:
        self.cancelled = False


class TritonEventStream:
    """A TextStream (service/engine/textgen.py) fed by Triton's responses."""

    def __init__(self, events: AsyncIterator[Event], handle: _Handle, prompt_tokens: int) -> None:
        self._handle = handle
        self.prompt_tokens = prompt_tokens
        self._events = events

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events

    async def bursts(self) -> AsyncIterator[list[Event]]:
        async for event in self._events:  # one response per token arrives from Triton anyway
            yield [event]

    def cancel(self) -> None:
        self._handle.cancelled = True


class TritonTextModel(TritonModelHandle, BaseTextModel):
    def __init__(
        self,
        manifest: TextManifest,
        settings: Settings,
        connection: TritonConnection,
        triton_model: str,
        observer: EngineObserver | None = None,
    ) -> None:
        BaseTextModel.__init__(self, manifest, settings)
        TritonModelHandle.__init__(self, connection, triton_model)
        self.obs = observer or EngineObserver()
        self._draining = False
        self._in_flight = 0

    @classmethod
    def from_repository(
        cls, model_dir: Path, settings: Settings, connection: TritonConnection, observer: EngineObserver | None = None
    ) -> TritonTextModel:
        """The gateway reads the entry's manifest and tokenizer; the graphs stay with Triton."""
        manifest = TextManifest.read(model_dir)
        return cls(manifest, settings, connection, manifest.triton_model or triton_lm_name(manifest.name), observer)

    # ---- state --------------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        """Positions per KV slot inside Triton (its config's KILN_MAX_SEQ_LEN), capped by the model."""
        seq = self.triton_config.get("parameters", {}).get("KILN_MAX_SEQ_LEN", {}).get("string_value")
        return min(int(seq) if seq else self.settings.max_seq_len, self.manifest.max_position_embeddings)

    def begin_drain(self) -> None:
        self._draining = True

    @property
    def busy(self) -> int:
        return self._in_flight

    # ---- requests -----------------------------------------------------------------------------
    def open_stream(self, params: GenerateParams, protocol: str = "http") -> TritonEventStream:
        """Validate and check Triton now (errors surface before any response starts), stream later."""
        if self._draining:
            raise Unavailable("server is shutting down; retry on another replica", code="draining")
        if params.grammar is not None:
            raise NotSupported(
                "response_format needs the gateway's own engine (KILN_BACKEND=onnxruntime): the engine inside "
                "Triton cannot apply the gateway's token masks"
            )
        prompt_ids = self.validate(params)
        self.connection.check(self.triton_model)
        handle = _Handle()
        timeout = params.timeout_s if params.timeout_s is not None else self.settings.default_timeout_s
        events = self._events(params, prompt_ids, handle, timeout, protocol)
        return TritonEventStream(events, handle, len(prompt_ids))

    def _inputs(self, params: GenerateParams, prompt_ids: list[int], timeout: float | None) -> list:
        import tritonclient.grpc as grpcclient

        s = params.sampling
        arrays: dict[str, np.ndarray] = {
            "INPUT_IDS": np.asarray(prompt_ids, np.int64),
            "MAX_NEW_TOKENS": np.array([params.max_new_tokens], np.int32),
            "TEMPERATURE": np.array([s.temperature], np.float32),
            "TOP_K": np.array([s.top_k], np.int32),
            "TOP_P": np.array([s.top_p], np.float32),
            "REPETITION_PENALTY": np.array([s.repetition_penalty], np.float32),
            "SEED": np.array([-1 if s.seed is None else s.seed], np.int64),
            "IGNORE_EOS": np.array([params.ignore_eos], np.bool_),
        }
        if params.stop:
            arrays["STOP"] = np.array([x.encode() for x in params.stop], dtype=np.object_)
        if timeout is not None:
            arrays["TIMEOUT_S"] = np.array([timeout], np.float32)
        if params.logprobs is not None:
            arrays["LOGPROBS"] = np.array([params.logprobs], np.int32)
        extras = {"MIN_P": s.min_p, "PRESENCE_PENALTY": s.presence_penalty, "FREQUENCY_PENALTY": s.frequency_penalty}
        arrays.update({name: np.array([v], np.float32) for name, v in extras.items() if v})
        if s.logit_bias:
            arrays["LOGIT_BIAS_IDS"] = np.array([t for t, _ in s.logit_bias], np.int64)
            arrays["LOGIT_BIAS_VALUES"] = np.array([b for _, b in s.logit_bias], np.float32)
        if params.min_tokens:
            arrays["MIN_TOKENS"] = np.array([params.min_tokens], np.int32)
        if params.tenant:
            arrays["TENANT"] = np.array([params.tenant.encode()], dtype=np.object_)
        if params.stop_token_ids:
            arrays["STOP_TOKEN_IDS"] = np.array(sorted(params.stop_token_ids), np.int64)
        inputs = []
        for name, array in arrays.items():  # names and types: contracts/triton.py
            tensor = grpcclient.InferInput(name, list(array.shape), LM_INPUT[name].wire_dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    async def _events(
        self, params: GenerateParams, prompt_ids: list[int], handle: _Handle, timeout: float | None, protocol: str
    ) -> AsyncIterator[Event]:
        created = time.monotonic()
        inputs = self._inputs(params, prompt_ids, timeout)
        conn, model = self.connection, self.triton_model
        decoder = StreamDecoder(self.decode, params.stop)
        generated = 0
        first_at = last_at = None
        attempt = 0
        self._in_flight += 1
        try:
            while True:
                call = None
                try:
                    call = conn.stream(model, inputs, f"kiln-{uuid.uuid4().hex[:16]}")
                    while not handle.cancelled:
                        result, error = await conn.next_response(call, model)
                        if error is not None:
                            raise conn.map_exception(error, model)
                        reason = result.as_numpy("FINISH_REASON")
                        if reason is not None:
                            finish = self._finish(result, reason, created, first_at, generated, protocol)
                            tail = decoder.flush() if finish.reason in ("length", "eos", "timeout") else ""
                            if tail:  # as the in-process engine does
                                yield TokenEvent(tail, -1)
                            yield finish
                            return
                        for token in result.as_numpy("TOKEN_IDS").tolist():
                            now = time.monotonic()
                            if first_at is None:
                                first_at = now
                                self.obs.ttft(self.name, now - created)
                            elif last_at is not None:
                                self.obs.inter_token(self.name, now - last_at)
                            last_at = now
                            generated += 1
                            self.obs.tokens(self.name, protocol, 1)
                            yield self._token(result, token, decoder)
                    return
                except KilnError as exc:
                    conn.mark_unavailable(model, exc)
                    retry = generated == 0 and getattr(exc, "retryable", False) and attempt < conn.retries
                    if retry and (timeout is None or time.monotonic() - created < timeout):
                        await asyncio.sleep(conn.backoff_s * 2**attempt)
                        attempt += 1
                        continue
                    now = time.monotonic()
                    ttft = None if first_at is None else first_at - created
                    yield FinishEvent("error", len(prompt_ids), generated, ttft, now - created, 0.0, exc.message, exc)
                    return
                finally:
                    if call is not None:
                        call.cancel()  # after the final response this is a no-op; before it, Triton frees the slot
        finally:
            self._in_flight -= 1

    @staticmethod
    def _token(result, token: int, decoder: StreamDecoder) -> TokenEvent:  # type: ignore[no-untyped-def]
        event = TokenEvent(decoder.push(token), token)
        logprob = result.as_numpy("LOGPROB")
        if logprob is not None and logprob.size:
            ids, lps = result.as_numpy("TOP_IDS"), result.as_numpy("TOP_LOGPROBS")
            event.logprob = float(logprob[0])
            event.top_logprobs = [(int(i), float(lp)) for i, lp in zip(ids.tolist(), lps.tolist(), strict=True)]
        return event

    def _finish(self, result, reason, created, first_at, generated, protocol) -> FinishEvent:  # type: ignore[no-untyped-def]
        reason = reason.reshape(-1)[0]
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        completion = int(result.as_numpy("COMPLETION_TOKENS").reshape(-1)[0])
        if completion > generated:  # the EOS token is counted but never sent
            self.obs.tokens(self.name, protocol, completion - generated)
        now = time.monotonic()
        finish = FinishEvent(
            reason=reason,
            prompt_tokens=int(result.as_numpy("PROMPT_TOKENS").reshape(-1)[0]),
            completion_tokens=completion,
            ttft_s=None if first_at is None else first_at - created,
            total_s=now - created,
            queue_s=float(result.as_numpy("QUEUE_MS").reshape(-1)[0]) / 1000.0,
        )
        if reason == "error":
            message = result.as_numpy("MESSAGE").reshape(-1)[0]
            finish.message = message.decode() if isinstance(message, bytes) else str(message)
        return finish

    def close(self) -> None:
        self.connection.close()
