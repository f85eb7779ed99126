"""The gateway's connection to a Triton Inference Server (KILN_BACKEND=triton).

Generic on purpose: the text model streams through `stream`, and a classifier can send its
batched crops through `infer`; both share one gRPC channel (tritonclient.grpc.aio), created
once per event loop and reused by every request. A monitor thread polls each watched model's
readiness (its own persistent channel), so `/readyz` reflects Triton's per-model state and
requests to a model known to be down fail at once with 503 instead of waiting.

Failures map to Kiln's error table: Triton unreachable -> 503 `triton_unavailable`, model
missing or not ready -> 503 `model_unavailable`, no response within KILN_TRITON_TIMEOUT_S ->
503 `triton_timeout`; the model's own refusals keep their codes (`queue_full` 429, ...).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from service.errors import InvalidRequest, KilnError, QueueFull, Unavailable

log = logging.getLogger("kiln.triton")

# tritonclient's defaults, plus a short reconnect backoff so a restarted Triton is found within
# about a second (gRPC's default backoff grows to two minutes), and a subchannel pool per
# channel: with gRPC's global pool, the fresh channel made after a recovery would share the old
# channel's connection, still in backoff, and fail fast with "connection refused" like it.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
]
_MODEL_GONE = re.compile(r"unknown model|is not found|not ready|no available version|unavailable", re.I)
_KILN_CODE = re.compile(r"^(?P<code>[a-z_]+): (?P<message>.*)$", re.S)


class TritonError(Unavailable):
    """503 from the Triton path; `retryable` says a fresh attempt may succeed."""

    def __init__(self, message: str, *, code: str, retryable: bool = True, retry_after_s: int = 1) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})
        self.retryable = retryable


@dataclass
class ModelState:
    ready: bool = False
    reason: str = "not checked yet"
    config: dict | None = None
    checked: threading.Event = field(default_factory=threading.Event)
    on_change: list[Callable[[bool], None]] = field(default_factory=list)


def from_rpc_error(exc: grpc.RpcError, url: str, model: str) -> KilnError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED):
        return TritonError(f"Triton at {url} is unavailable ({code.name}: {detail})", code="triton_unavailable")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TritonError(f"Triton at {url} did not answer in time for {model!r}", code="triton_timeout")
    if code in (grpc.StatusCode.NOT_FOUND,) or _MODEL_GONE.search(detail or ""):
        return TritonError(f"model {model!r} is unavailable on Triton at {url}: {detail}", code="model_unavailable")
    return KilnError(f"Triton failed for {model!r}: {detail}", code="inference_failed")


def from_response_error(message: str, url: str, model: str) -> KilnError:
    """An error inside the stream: Kiln's model reports `<code>: <message>`; Triton its own text."""
    m = _KILN_CODE.match(message)
    if m and m["code"] == "queue_full":
        return QueueFull(m["message"], headers={"Retry-After": "1"})
    if m and m["code"] in ("invalid_request", "invalid_parameter"):
        return InvalidRequest(m["message"], code=m["code"])
    if m and m["code"] == "draining":
        return TritonError(m["message"], code="draining")
    if _MODEL_GONE.search(message):
        return TritonError(f"model {model!r} is unavailable on Triton at {url}: {message}", code="model_unavailable")
    return KilnError(f"Triton model {model!r} failed: {message}", code="inference_failed")


class TritonConnection:
    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        retries: int = 3,
        backoff_s: float = 0.2,
        timeout_s: float = 30.0,
        poll_s: float = 1.0,
    ) -> None:
        if protocol != "grpc":
            # The decoupled LM streams over gRPC only; unary models could use HTTP (not wired yet).
            raise ValueError(f"KILN_TRITON_PROTOCOL={protocol!r}: Kiln's Triton backend speaks grpc")
        self.url = url
        self.protocol = protocol
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._aio: tuple[asyncio.AbstractEventLoop, object, int] | None = None
        self._recoveries = 0  # times a model turned ready: each retires the inference channel
        self._models: dict[str, ModelState] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # ---- the shared inference channel ------------------------------------------------------
    def client(self):  # type: ignore[no-untyped-def]
        """The aio client of the running loop: one channel, reused by every request."""
        import tritonclient.grpc.aio as grpc_aio

        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio[0] is not loop or self._aio[2] != self._recoveries:
            # After Triton comes back (the monitor saw a model turn ready), a fresh channel: the old
            # one may sit in reconnect backoff and fail every call fast until its next attempt.
            # Calls still running on it keep it alive until they finish.
            client = grpc_aio.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
            self._aio = (loop, client, self._recoveries)
        return self._aio[1]

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """One unary request (e.g. a classifier's batched crops), retried with backoff while
        Triton or the model is unavailable."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        self.check(model)
        tensors = []
        for name, array in inputs.items():
            t = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            t.set_data_from_numpy(array)
            tensors.append(t)
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs]
        for attempt in range(self.retries + 1):
            try:
                result = await self.client().infer(model, tensors, outputs=requested, client_timeout=self.timeout_s)
                return {n: result.as_numpy(n) for n in outputs}
            except InferenceServerException as exc:
                error = self.map_exception(exc, model)
            if not getattr(error, "retryable", False) or attempt == self.retries:
                raise error
            await asyncio.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def stream(self, model: str, inputs: list, request_id: str):  # type: ignore[no-untyped-def]
        """Start one bidirectional stream call for one request on the shared channel; the
        caller iterates (result, error) pairs and cancels the call when done."""

        async def one_request() -> AsyncIterator[dict]:
            yield {"model_name": model, "inputs": inputs, "request_id": request_id}

        return self.client().stream_infer(one_request())

    async def next_response(self, call, model: str):  # type: ignore[no-untyped-def]
        """The stream's next (result, error), or a mapped KilnError; never waits longer than timeout_s."""
        try:
            return await asyncio.wait_for(call.__anext__(), self.timeout_s)
        except StopAsyncIteration:
            raise TritonError(f"Triton closed the stream for {model!r} early", code="triton_unavailable") from None
        except TimeoutError:
            raise TritonError(
                f"no response from Triton model {model!r} in {self.timeout_s} s (KILN_TRITON_TIMEOUT_S)",
                code="triton_timeout",
                retryable=False,
            ) from None
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.url, model) from None

    def map_exception(self, exc: Exception, model: str) -> KilnError:
        status = str(getattr(exc, "status", lambda: "")() or "")
        message = getattr(exc, "message", lambda: str(exc))() or str(exc)
        if "UNAVAILABLE" in status:
            return TritonError(f"Triton at {self.url} is unavailable: {message}", code="triton_unavailable")
        if "DEADLINE_EXCEEDED" in status:
            return TritonError(f"Triton at {self.url} did not answer in time", code="triton_timeout", retryable=False)
        return from_response_error(message, self.url, model)

    # ---- readiness ------------------------------------------------------------------------
    def watch(self, model: str, on_change: Callable[[bool], None] | None = None) -> ModelState:
        with self._lock:
            state = self._models.setdefault(model, ModelState())
            if on_change:
                state.on_change.append(on_change)
            if self._monitor is None:
                self._monitor = threading.Thread(target=self._poll, name="kiln-triton-health", daemon=True)
                self._monitor.start()
        self._wake.set()
        return state

    def state(self, model: str) -> ModelState:
        return self._models.get(model) or ModelState()

    def check(self, model: str) -> None:
        """Fail fast (503) when the monitor knows the model is down."""
        state = self.state(model)
        if not state.ready:
            code = "triton_unavailable" if "unreachable" in state.reason else "model_unavailable"
            raise TritonError(state.reason, code=code)

    def mark_unavailable(self, model: str, error: KilnError) -> None:
        """A request saw Triton fail: stop sending until the monitor sees the model ready again."""
        if getattr(error, "code", "") in ("triton_unavailable", "model_unavailable"):
            self._set(model, False, error.message)
            self._wake.set()

    def _set(self, model: str, ready: bool, reason: str, config: dict | None = None) -> None:
        state = self._models.get(model)
        if state is None:
            return
        changed = state.ready != ready
        state.ready, state.reason = ready, reason
        if config is not None:
            state.config = config
        state.checked.set()
        if changed and ready:
            self._recoveries += 1
        if changed:
            log.warning("Triton model %s is %s (%s)", model, "ready" if ready else "unavailable", reason)
            for callback in state.on_change:
                callback(ready)

    def _poll(self) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        delay = self.backoff_s
        while not self._stop.is_set():
            all_ready = True
            for model, state in list(self._models.items()):
                try:
                    ready = client.is_model_ready(model, client_timeout=2.0)
                    config = None
                    if ready and state.config is None:
                        config = client.get_model_config(model, as_json=True, client_timeout=2.0).get("config", {})
                    reason = "ready" if ready else f"model {model!r} is not ready on Triton at {self.url}"
                    self._set(model, ready, reason, config)
                except InferenceServerException as exc:
                    ready = False
                    self._set(model, False, f"Triton at {self.url} is unreachable: {exc.message()}")
                all_ready = all_ready and ready
            # Poll calmly while everything is up; back off from backoff_s to poll_s while not.
            delay = self.poll_s if all_ready else min(delay * 2, self.poll_s)
            self._wake.wait(delay)
            if self._wake.is_set():
                self._wake.clear()
                delay = self.backoff_s
        client.close()

    def wait_checked(self, model: str, timeout: float) -> bool:
        return self.state(model).checked.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._aio = None  # the channel closes with its loop


class TritonModelHandle:
    """One model entry on Triton as the gateway sees it: readiness from the shared monitor, its
    config, and the start-up watch. The text model and the classifier runner both build on it."""

    def __init__(self, connection: TritonConnection, triton_model: str) -> None:
        self.connection = connection
        self.triton_model = triton_model

    @property
    def triton_config(self) -> dict:
        return self.connection.state(self.triton_model).config or {}

    @property
    def ready(self) -> bool:
        return self.connection.state(self.triton_model).ready

    @property
    def unavailable_reason(self) -> str | None:
        state = self.connection.state(self.triton_model)
        return None if state.ready else state.reason

    def start(self, on_change=None, wait_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
        """Watch the Triton model; wait briefly for the first check (Triton may come up later)."""
        self.connection.watch(self.triton_model, on_change)
        self.connection.wait_checked(self.triton_model, wait_s)
