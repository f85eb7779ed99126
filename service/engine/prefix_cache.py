"""What each free slot still holds, and which slot a new prompt should take (prefix caching).

A finished sequence leaves its state in its slot. When a prompt arrives, the engine asks for
the free slot whose cached tokens share the longest prefix with it (llama.cpp's slot choice),
reuses those positions and prefills only the rest. A hit never covers the prompt's last token,
whose logits are needed (vLLM's rule). Without a hit the least recently used free slot is taken.

Isolation: a cached prefix serves only requests of the same tenant (the API key's
fingerprint) unless the operator shares the cache (`KILN_PREFIX_CACHE_SCOPE=shared`); otherwise
the time to first token would tell one tenant what another one's prompt began with.

A recurrent state cannot be rolled back to an earlier position: for it only a whole-entry hit
counts (the prompt starts with everything the slot holds), never a partial one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Entry:
    tokens: np.ndarray  # int64: the positions the slot holds, in order
    tenant: str
    used: int  # a logical clock: larger = more recent


@dataclass(frozen=True)
class Choice:
    row: int
    reuse: int  # positions of the prompt already in that row


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


class PrefixCache:
    def __init__(self, max_batch: int, shared: bool = False, partial: bool = True) -> None:
        self.rows: list[Entry | None] = [None] * max_batch
        self.shared = shared  # one cache for every tenant (operator's choice)
        self.partial = partial  # False for recurrent state: whole entries only
        self._clock = 0

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def retain(self, row: int, tokens: list[int] | np.ndarray, tenant: str) -> None:
        """The slot keeps a finished sequence's positions."""
        self.rows[row] = Entry(np.asarray(tokens, np.int64), tenant, self._tick()) if len(tokens) else None

    def forget(self, row: int) -> None:
        self.rows[row] = None

    def swap(self, a: int, b: int) -> None:
        """The slots' contents were swapped (the engine compacts its rows)."""
        self.rows[a], self.rows[b] = self.rows[b], self.rows[a]

    def choose(self, free: range, prompt: list[int], tenant: str) -> Choice:
        """The free row for `prompt` and how many of its positions it can reuse."""
        query = np.asarray(prompt, np.int64)
        limit = len(prompt) - 1  # the last prompt token is always computed: its logits are needed
        best: Choice | None = None
        best_used = -1
        for row in free:
            entry = self.rows[row]
            if entry is None or not (self.shared or entry.tenant == tenant):
                continue
            reuse = min(common_prefix(entry.tokens, query), limit)
            if not self.partial and reuse < len(entry.tokens):
                continue  # a recurrent state holds all of its tokens or is useless
            if reuse > 0 and (best is None or (reuse, entry.used) > (best.reuse, best_used)):
                best, best_used = Choice(row, reuse), entry.used
        if best is None:  # no hit: an empty row, else the least recently used one
            empty = [row for row in free if self.rows[row] is None]
            row = empty[0] if empty else min(free, key=lambda r: self.rows[r].used)  # type: ignore[union-attr]
            best = Choice(row, 0)
        self.rows[best.row] = None  # the new sequence owns the row now (and re-retains it when done)
        return best
