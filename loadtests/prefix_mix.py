"""The shared-prefix mix of `make loadtest` (issue 15), and the checks run_load makes of it.

Traffic (loadtests/locustfile.py `KilnPrefixUser`): several API keys, each with its own long
system prompt (the start of a standard-library module) followed by a new question per request,
and chats that grow by one turn per request. Those are the prefixes a real deployment repeats.

Checks, on the real server:
- exactness: a sample of the greedy responses (those the cache served first) is replayed, one
  at a time, against a second server with the prefix cache and speculation off; the token ids
  (`/generate`) or the message text (chat) must be the same;
- isolation: while the load runs, and after it, keys that never sent a prompt send another
  key's system prompt; `timings.cached_tokens` must be 0 (a cross-key hit would be > 0). After
  the load each owner sends its prompt twice first, so the probe finds it just cached: the
  owner's second request must hit (the probe could see a leak), the probe's must not.
"""

from __future__ import annotations

import json
import random
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx

USER_KEYS = tuple(f"load-user-key-{i}" for i in range(4))  # the keys traffic comes from
PROBE_KEYS = tuple(f"load-probe-key-{i:03d}" for i in range(128))  # each sends one request, ever
SOURCES = ("textwrap", "bisect", "heapq", "colorsys", "fnmatch", "glob", "shlex", "calendar")
QUESTIONS = (
    "\n# Write a function that reverses a list.\ndef",
    "\n# Add a docstring to the first function above.\n",
    "\n# How would you test this module?\nimport unittest\n",
    "\n# Refactor: split the longest function in two.\n",
    "\n# Rename the module-level constants.\n",
    "\ndef main():\n",
    "\nif __name__ == '__main__':\n",
    "\n# Explain what the first class does.\n#",
)


def all_keys() -> str:
    """KILN_API_KEYS for the server: the traffic's keys and the probes'."""
    return ",".join(USER_KEYS + PROBE_KEYS)


def system_prompt(index: int, chars: int) -> str:
    """The system prompt of key `index` (its first `chars` characters of a stdlib module)."""
    name = SOURCES[index % len(SOURCES)]
    source = (Path(sysconfig.get_paths()["stdlib"]) / f"{name}.py").read_text()
    return f"# Reviewing the module `{name}`.\n{source[:chars]}"


def chat_system(index: int, chars: int) -> str:
    return system_prompt(index + len(USER_KEYS), chars // 2)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def parse_sse(lines: Iterable[str]) -> dict:
    """A /generate stream's token ids (of the events that carry text), text and cached_tokens (-1:
    no finish event). A token whose text is held back (partial UTF-8) has no event; its text comes
    with a later one, so ids and text together pin the output down."""
    tokens, text, cached, finish = [], [], -1, False
    for line in lines:
        if line.startswith("event: finish"):
            finish = True
        elif line.startswith("data: {"):
            data = json.loads(line[6:])
            if finish:
                cached = int(data["timings"]["cached_tokens"])
            elif data.get("token", -1) >= 0:
                tokens.append(int(data["token"]))
                text.append(data["text"])
    return {"tokens": tokens, "text": "".join(text), "cached": cached}


def generate_stream(client: httpx.Client, body: dict, key: str) -> dict:
    """`parse_sse` of one streaming /generate request."""
    with client.stream("POST", "/generate", json={**body, "stream": True}, headers=bearer(key)) as r:
        if r.status_code != 200:
            raise RuntimeError(f"/generate: HTTP {r.status_code}: {r.read()[:200]!r}")
        return parse_sse(r.iter_lines())


def cached_tokens(client: httpx.Client, prompt: str, key: str) -> int | None:
    """cached_tokens of a short greedy /generate request (None: shed with 429, not admitted)."""
    r = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 2, "temperature": 0}, headers=bearer(key))
    if r.status_code == 429:
        return None
    r.raise_for_status()
    return int(r.json()["timings"]["cached_tokens"])


class Prober:
    """During the load: every `period_s` a never-used key sends a traffic key's system prompt."""

    def __init__(self, url: str, chars: int, period_s: float) -> None:
        self.url, self.chars, self.period_s = url, chars, period_s
        self.keys = list(PROBE_KEYS[len(USER_KEYS) :])  # the first few are kept for `after_load`
        self.results: list[int] = []  # cached_tokens per admitted probe
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            i = 0
            while not self._stop.wait(self.period_s) and self.keys:
                prompt = system_prompt(i % len(USER_KEYS), self.chars) + random.choice(QUESTIONS)
                try:
                    cached = cached_tokens(client, prompt, self.keys[0])
                except (httpx.HTTPError, RuntimeError) as exc:
                    self.errors.append(str(exc))
                    continue
                if cached is not None:  # admitted: this key has now sent a prompt, never use it again
                    self.keys.pop(0)
                    self.results.append(cached)
                    i += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def after_load(url: str, chars: int) -> dict:
    """Each traffic key's prompt, just cached by its owner, asked for by a fresh key."""
    owner_hits, probe_hits = [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        for i, key in enumerate(USER_KEYS):
            prompt = system_prompt(i, chars)
            cached_tokens(client, prompt + QUESTIONS[0], key)
            owner_hits.append(cached_tokens(client, prompt + QUESTIONS[1], key) or 0)
            probe_hits.append(cached_tokens(client, prompt + QUESTIONS[2], PROBE_KEYS[i]))
    return {"owner": owner_hits, "probe": probe_hits}


def pick(samples_file: Path, count: int, seed: int = 0) -> list[dict]:
    """Up to `count` recorded greedy responses, those served from the cache first."""
    if not samples_file.exists():
        return []
    samples = [json.loads(line) for line in samples_file.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    hits = [s for s in samples if s["cached"] > 0]
    misses = [s for s in samples if s["cached"] == 0]
    chosen = rng.sample(hits, min(count, len(hits)))
    return chosen + rng.sample(misses, min(count - len(chosen), len(misses)))


def replay(samples: list[dict], url: str) -> dict:
    """Each sample again on a server without prefix cache or speculation: the same output?"""
    mismatches = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for s in samples:
            if s["kind"] == "generate":
                out = generate_stream(client, s["body"], s["key"])
                same = (out["tokens"], out["text"]) == (s["tokens"], s["text"])
            else:
                r = client.post("/v1/chat/completions", json=s["body"], headers=bearer(s["key"]))
                r.raise_for_status()
                same = r.json()["choices"][0]["message"]["content"] == s["content"]
            if not same:
                mismatches.append({"kind": s["kind"], "cached": s["cached"]})
    return {
        "checked": len(samples),
        "hits": sum(s["cached"] > 0 for s in samples),
        "mismatches": mismatches,
    }


def wait_idle(metric: Callable[[str], float], timeout: float = 30.0) -> None:
    """Until no sequence holds a slot or waits (the probes then meet settled slots)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and metric("kiln_kv_slots_in_use") + metric("kiln_queue_depth") > 0:
        time.sleep(0.2)
