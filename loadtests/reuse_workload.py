"""What `bench_reuse.py` sends, and how it times one request on a real engine.

Every prompt is built from token ids, so its length is exact, and from text every machine has:
the held-out (validation) files of the demo LM's corpus, the Python standard library's own
source (export/train_demo/corpus.py). The demo LM never trained on them, so a "grounded" prompt
is code it has not memorised: whatever it repeats, it repeats from the prompt.

- system prompt + user suffix: the first `system` ids of the held-out text, then `suffix` ids
  taken from a region of it no other prompt uses, distinct for every request of the run;
- more system prompts than slots: `tenants` different system prompts of `system` ids (regions of
  the held-out text of their own), requested in turn, each with its own suffix;
- chat replay: a shorter system prompt, then per turn the previous turn's prompt + the reply
  the model gave + a new user message (again distinct ids);
- speculative decoding: `grounded` — a held-out function, a comment asking for it again, its
  first line (the answer repeats the prompt); `echo` — the prompt already holds the model's own
  greedy continuation of that function, then the function again (the model's output repeats
  the prompt by construction: what n-gram lookup can give at best); `open-ended` — a function's
  first line alone (nothing to copy except what the model itself repeats).
"""

from __future__ import annotations

import ast
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from service.engine.engine import GenerationEngine
from service.engine.observer import EngineObserver
from service.engine.request import Event, FinishEvent, GenerationRequest
from service.engine.sampling import SamplingParams

AGAIN = "\n\n# The same function again, unchanged:\n"
KINDS = ("grounded", "echo", "open-ended")


@dataclass(frozen=True)
class Profile:
    """Prompt and output lengths (in tokens) of a run."""

    system: int = 400  # the shared system prompt
    suffix: int = 16  # each request's own user suffix
    requests: int = 16  # suffixes per round
    tenants: int = 16  # distinct system prompts, requested in turn (twice the default slots)
    chat_system: int = 64
    turns: int = 6
    user: int = 24  # a user message
    reply: int = 32  # the model's reply (greedy, EOS ignored: every turn has the same length)
    new: int = 128  # tokens generated per speculative-decoding prompt
    functions: int = 8  # prompts per kind
    code: int = 160  # most ids of a function in a grounded prompt
    echo_code: int = 96  # most ids of the function in an echo prompt (it appears twice)
    line: int = 24  # most ids of the repeated first line


FULL = Profile()
QUICK = Profile(
    system=40, suffix=8, requests=3, chat_system=16, turns=3, user=8, reply=8, new=16, functions=1, code=32,
    echo_code=20, line=12,
)  # fmt: skip


@functools.cache
def held_out_texts() -> tuple[str, ...]:
    """The corpus' validation files, in a fixed order (sorted by path)."""
    from export.train_demo.corpus import load_corpus

    corpus = load_corpus()
    return tuple(text for _, text in sorted(zip(corpus.val_files, corpus.val, strict=True)))


def functions(texts: Sequence[str], count: int, lines: tuple[int, int] = (8, 16)) -> list[str]:
    """The first `count` top-level functions of `lines` lines (first to last, inclusive)."""
    found: list[str] = []
    for text in texts:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        source = text.splitlines()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.end_lineno is not None:
                if lines[0] <= node.end_lineno - node.lineno + 1 <= lines[1]:
                    found.append("\n".join(source[node.lineno - 1 : node.end_lineno]) + "\n")
            if len(found) == count:
                return found
    raise SystemExit(f"only {len(found)} held-out functions of {lines[0]}-{lines[1]} lines; {count} needed")


class Prompts:
    """One model's prompts (its tokenizer's ids), the same for every engine and every round."""

    def __init__(self, encode: Callable[[str], list[int]], bos: list[int], profile: Profile) -> None:
        texts = held_out_texts()
        self.encode, self.bos, self.p = encode, bos, profile
        self.stream: list[int] = []  # held-out code as one id stream; regions of it are the prompts
        for text in texts:
            self.stream += encode(text)
            if len(self.stream) > 40_000:
                break
        self.functions = functions(texts, profile.functions)
        self._system = self.bos + self.stream[: profile.system]
        self._chat_system = self.bos + self.stream[1000 : 1000 + profile.chat_system]

    def _window(self, region: int, index: int, size: int) -> list[int]:
        """The `index`-th `size`-id window of region 2000 + 9000 * region: never reused."""
        start = 2000 + 9000 * region + index * size
        if start + size > len(self.stream):
            raise SystemExit(f"held-out text too short for window {index} of region {region}")
        return self.stream[start : start + size]

    def system_request(self, round_: int, i: int) -> list[int]:
        return self._system + self._window(0, round_ * self.p.requests + i, self.p.suffix)

    def tenant_request(self, round_: int, j: int) -> list[int]:
        """System prompt `j` of `tenants` (region 3), then a suffix no other request has (region 4)."""
        suffix = self._window(4, round_ * self.p.tenants + j, self.p.suffix)
        return self.bos + self._window(3, j, self.p.system) + suffix

    def tenant_primer(self, j: int) -> list[int]:
        """System prompt `j` with a suffix none of the measured requests has: caches it, untimed."""
        return self.bos + self._window(3, j, self.p.system) + self._window(1, 1 + j, self.p.suffix)

    def primer(self) -> list[int]:
        """A request the measured ones share only the system prompt with (warms the cache)."""
        return self._system + self._window(1, 0, self.p.suffix)

    def chat_turn(self, history: list[int], round_: int, turn: int) -> list[int]:
        """The next turn's prompt: the conversation so far (`history`, empty at the start) + a user message."""
        return (history or self._chat_system) + self._window(2, round_ * self.p.turns + turn, self.p.user)

    def spec(self, kind: str, i: int, own: Callable[[list[int]], list[int]]) -> list[int]:
        """Prompt `i` of `kind`; `own(prompt)` is the model's greedy continuation (for echo)."""
        source = self.functions[i]
        first = self.encode(source.splitlines()[0] + "\n")[: self.p.line]
        if kind == "grounded":
            return self.bos + self.encode(source)[: self.p.code] + self.encode(AGAIN) + first
        if kind == "echo":
            head = self.bos + self.encode(source)[: self.p.echo_code]
            return head + own(head) + self.encode(AGAIN) + head[len(self.bos) :]
        if kind == "open-ended":
            return self.bos + first
        raise ValueError(f"unknown prompt kind {kind!r}; choose from {', '.join(KINDS)}")


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # perf_counter seconds after submit, per token
    cached: int = 0
    finish: str = ""

    @property
    def ttft(self) -> float:
        return self.times[0]

    @property
    def total(self) -> float:
        return self.times[-1]


def run(engine: GenerationEngine, prompt: list[int], new: int) -> Result:
    """One greedy request alone on `engine` (EOS ignored), timed where its tokens are emitted."""
    result, done = Result(), threading.Event()

    def emit(event: Event) -> None:
        if isinstance(event, FinishEvent):
            result.cached, result.finish = event.cached_tokens, event.reason
            done.set()
        elif event.token_id >= 0:
            result.times.append(time.perf_counter() - t0)
            result.tokens.append(event.token_id)

    req = GenerationRequest(list(prompt), new, SamplingParams(), [], emit, ignore_eos=True)
    t0 = time.perf_counter()
    engine.submit(req)
    if not done.wait(600):
        raise RuntimeError("a benchmark request did not finish in 10 minutes")
    if result.finish != "length" or len(result.tokens) != new:
        raise RuntimeError(f"request ended with {result.finish!r} after {len(result.tokens)} of {new} tokens")
    return result


class Counts(EngineObserver):
    """The engine's own account of what it reused and guessed (what Prometheus would count)."""

    def __init__(self) -> None:
        self.queried = self.hit = 0  # prompt tokens looked up / found in the prefix cache
        self.steps = self.proposed = self.accepted = 0  # verify calls, guessed and confirmed tokens

    def prefix_cache(self, model: str, queried: int, hit: int) -> None:
        self.queried += queried
        self.hit += hit

    def speculation(self, model: str, proposed: int, accepted: int) -> None:
        self.steps += 1
        self.proposed += proposed
        self.accepted += accepted

    def snapshot(self) -> dict[str, int]:
        return dict(vars(self))
