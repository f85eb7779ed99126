"""Where `kiln generate` and `kiln chat` get their text: a model run in this process, or a server.

In-process, the model is the gateway's own `TextModel` (the engine builder, the manifest, the
data plane's defaults and limits), so a prompt is refused or sampled exactly as a server would.
With `--url` the same options travel over HTTP (`/generate`, `/v1/chat/completions`). Either
way a generation is an iterator of text chunks; `cancel()` (Ctrl-C) stops it and frees the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx


@dataclass
class Sampling:
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        """The set fields, by Kiln's /generate names (unset ones keep the model's defaults)."""
        out = {k: v for k, v in self.__dict__.items() if v is not None and k != "stop"}
        if self.stop:
            out["stop"] = list(self.stop)
        return out

    def openai_fields(self) -> dict[str, Any]:
        out = self.fields()
        if "max_new_tokens" in out:
            out["max_tokens"] = out.pop("max_new_tokens")
        return out


@dataclass
class Outcome:
    finish_reason: str = "unknown"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    total_s: float = 0.0

    def line(self) -> str:
        """One status line: tokens, time to first token, decode speed, why it ended."""
        parts = []
        if self.completion_tokens is not None:
            parts.append(f"{self.prompt_tokens} prompt + {self.completion_tokens} tokens")
        if self.ttft_s is not None:
            parts.append(f"TTFT {self.ttft_s * 1000:.0f} ms")
            decode = self.total_s - self.ttft_s
            if self.completion_tokens and self.completion_tokens > 1 and decode > 0:
                parts.append(f"{(self.completion_tokens - 1) / decode:.1f} tok/s")
        parts.append(f"finish: {self.finish_reason}")
        return ", ".join(parts)


class Generation(Protocol):
    outcome: Outcome

    def __iter__(self) -> Iterator[str]: ...

    def cancel(self) -> None: ...


class TextSource(Protocol):
    name: str

    def generate(self, prompt: str, sampling: Sampling) -> Generation: ...

    def chat(self, messages: list[dict[str, str]], sampling: Sampling) -> Generation: ...

    def close(self) -> None: ...


# -- in-process --------------------------------------------------------------------------------


class LocalGeneration:
    """A data-plane stream pumped on the model's event-loop thread into a thread-safe queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, open_stream: Callable[[], Any]) -> None:
        self.loop = loop
        self.events: queue.Queue[Any] = queue.Queue()
        self.outcome = Outcome()
        # Opening validates and enqueues: a refused request raises here, before any output.
        self.stream = asyncio.run_coroutine_threadsafe(self._open(open_stream), loop).result()
        asyncio.run_coroutine_threadsafe(self._pump(), loop)

    @staticmethod
    async def _open(open_stream: Callable[[], Any]) -> Any:
        return open_stream()

    async def _pump(self) -> None:
        async for event in self.stream:
            self.events.put(event)

    def __iter__(self) -> Iterator[str]:
        from service.engine.request import FinishEvent

        while True:
            try:
                event = self.events.get(timeout=0.1)  # short waits: Ctrl-C lands promptly
            except queue.Empty:
                continue
            if isinstance(event, FinishEvent):
                self.outcome = Outcome(
                    event.reason, event.prompt_tokens, event.completion_tokens, event.ttft_s, event.total_s
                )
                if event.reason == "error":
                    raise RuntimeError(event.message or "inference failed")
                return
            if event.text:
                yield event.text

    def cancel(self) -> None:
        """Free the slot, then wait for the engine to confirm (its finish event says `cancelled`)."""
        from service.engine.request import FinishEvent

        self.stream.cancel()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(event, FinishEvent):
                self.outcome = Outcome("cancelled", event.prompt_tokens, event.completion_tokens, event.ttft_s)
                return


class _OneModel:
    def __init__(self, model: Any) -> None:
        self.model = model

    def text_model(self, name: str | None) -> Any:
        return self.model


class LocalText:
    """A text entry of a model repository, loaded into this process (one slot: one user).

    Requests go through the gateway's own data planes (text and chat), on an event loop that
    runs in a thread of its own, so the REPL's main thread only reads a queue and Ctrl-C stays
    with it."""

    def __init__(self, repository: Path, name: str | None, variant: str | None = None) -> None:
        from contracts.manifest import TextManifest, read_manifest
        from service.dataplane.caller import Caller
        from service.dataplane.chat import ChatDataPlane
        from service.dataplane.text import TextDataPlane
        from service.engine.textgen import TextModel
        from service.metrics import Metrics
        from service.settings import Settings

        quiet_onnxruntime()
        entry = pick_entry(repository, name, TextManifest.kind)
        manifest = read_manifest(entry)
        assert isinstance(manifest, TextManifest)
        overrides: dict[str, Any] = {"model_repository": repository, "max_batch": 1}
        if variant:
            overrides["lm_variant"] = variant
        self.model = TextModel(manifest, Settings(**overrides), Metrics())
        self.model.start()
        self.name = manifest.name
        self.plane = TextDataPlane(_OneModel(self.model), Metrics())
        self.chat_plane = ChatDataPlane(self.plane)
        self.caller = Caller("cli")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kiln-cli-loop", daemon=True)
        self.thread.start()

    def _options(self, prompt: str, sampling: Sampling) -> Any:
        from service.dataplane.text import TextOptions

        return TextOptions(prompt=prompt, model=self.name, **sampling.fields())

    def generate(self, prompt: str, sampling: Sampling) -> LocalGeneration:
        options = self._options(prompt, sampling)
        return LocalGeneration(self.loop, lambda: self.plane.open(self.caller, options)[1])

    def chat(self, messages: list[dict[str, str]], sampling: Sampling) -> LocalGeneration:
        from service.dataplane.chat import ChatMessage

        turns = [ChatMessage(m["role"], m["content"]) for m in messages]
        options = self._options("", sampling)
        return LocalGeneration(self.loop, lambda: self.chat_plane.open_many(self.caller, turns, [options])[1][0])

    def close(self) -> None:
        """Cancel what still runs on the loop, stop and close it, then the model. A loop left
        unclosed is closed by its finalizer at interpreter exit, when its self-pipe may already
        be gone: a traceback on stderr after the CLI's one-line error."""
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_cancel_pending(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()
        self.model.close()


async def _cancel_pending() -> None:
    """Every task of the running loop but this one, cancelled and awaited."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def quiet_onnxruntime() -> None:
    """ONNX Runtime's graph warnings (e.g. an initializer listed as an input) are for whoever
    exported the graph, not for someone typing prompts: errors only, in the CLI."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


def pick_entry(repository: Path, name: str | None, kind: str) -> Path:
    """The named entry, or the only entry of `kind` in the repository."""
    from contracts.manifest import MANIFEST_FILE, read_json

    if name is not None:
        entry = repository / name
        if not (entry / MANIFEST_FILE).is_file():
            raise FileNotFoundError(f"{entry} holds no {MANIFEST_FILE} (export it with `kiln export`)")
        return entry
    entries = [p.parent for p in sorted(repository.glob(f"*/{MANIFEST_FILE}")) if not p.parent.name.startswith(".")]
    matching = [e for e in entries if read_json(e / MANIFEST_FILE).get("kind") == kind]
    if len(matching) != 1:
        found = [e.name for e in matching]
        raise ValueError(f"{len(matching)} {kind} entries in {repository} ({found}); name one with --model")
    return matching[0]


# -- over HTTP ---------------------------------------------------------------------------------


def sse_lines(response: httpx.Response) -> Iterator[tuple[str | None, str]]:
    """(event name, data) per Server-Sent Event; ends at `data: [DONE]`."""
    event: str | None = None
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
            if data == "[DONE]":
                return
            if event == "error":
                error = json.loads(data).get("error", {})
                raise RuntimeError(f"{error.get('code')}: {error.get('message')}")
            yield event, data
            event = None


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    response.read()
    try:
        error = response.json()["error"]
        raise RuntimeError(f"HTTP {response.status_code} {error['code']}: {error['message']}")
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}") from None


class RemoteGeneration:
    def __init__(self, client: httpx.Client, path: str, body: dict, chat: bool) -> None:
        self.client, self.path, self.body, self.chat = client, path, body, chat
        self.outcome = Outcome()
        self._response: httpx.Response | None = None

    def __iter__(self) -> Iterator[str]:
        started = time.perf_counter()
        with self.client.stream("POST", self.path, json=self.body) as response:
            self._response = response
            raise_for_error(response)
            for event, data in sse_lines(response):
                payload = json.loads(data)
                text = self._text(event, payload)
                if text:
                    if self.outcome.ttft_s is None:
                        self.outcome.ttft_s = time.perf_counter() - started
                    yield text
        self.outcome.total_s = time.perf_counter() - started

    def _text(self, event: str | None, payload: dict) -> str:
        if not self.chat:
            if event == "finish":
                usage = payload["usage"]
                self.outcome.finish_reason = payload["finish_reason"]
                self.outcome.prompt_tokens = usage["prompt_tokens"]
                self.outcome.completion_tokens = usage["completion_tokens"]
                return ""
            return str(payload.get("text", ""))
        if payload.get("usage"):
            self.outcome.prompt_tokens = payload["usage"]["prompt_tokens"]
            self.outcome.completion_tokens = payload["usage"]["completion_tokens"]
        choices = payload.get("choices") or []
        if not choices:
            return ""
        if choices[0].get("finish_reason"):
            self.outcome.finish_reason = choices[0]["finish_reason"]
        return str((choices[0].get("delta") or {}).get("content") or "")

    def cancel(self) -> None:
        """Closing the connection is the cancellation: the server frees the slot at its next step."""
        if self._response is not None:
            self._response.close()
        self.outcome.finish_reason = "cancelled"


class RemoteText:
    def __init__(self, url: str, name: str | None, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=httpx.Timeout(600, connect=10))
        self.name = name or self._only_text_model()

    def _only_text_model(self) -> str:
        response = self.client.get("/v1/models")
        raise_for_error(response)
        names = [m["id"] for m in response.json()["data"] if m.get("kind") == "text-generation"]
        if len(names) != 1:
            raise ValueError(f"the server serves {len(names)} text models ({names}); name one with --model")
        return names[0]

    def generate(self, prompt: str, sampling: Sampling) -> RemoteGeneration:
        body = {"model": self.name, "prompt": prompt, "stream": True, **sampling.fields()}
        return RemoteGeneration(self.client, "/generate", body, chat=False)

    def chat(self, messages: list[dict[str, str]], sampling: Sampling) -> RemoteGeneration:
        body = {
            "model": self.name,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **sampling.openai_fields(),
        }
        return RemoteGeneration(self.client, "/v1/chat/completions", body, chat=True)

    def close(self) -> None:
        self.client.close()
