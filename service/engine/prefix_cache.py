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
        """The free row for `prompt` and how many of its positions it can reuse.

        Taking a row destroys what it holds beyond the reused part, so a hit that covers less
        than half of the new prompt (often just BOS) goes to an empty row instead, as llama.cpp's
        slot similarity does; with no empty row the longest hit, else the least recently used.
        """
        query = np.asarray(prompt, np.int64)
        limit = len(prompt) - 1  # the last prompt token is always computed: its logits are needed
        strong: tuple[int, int, int] | None = None  # (reuse, used, row): covers half the prompt or more
        weak: tuple[int, int, int] | None = None  # any hit
        empty: int | None = None
        for row in free:
            entry = self.rows[row]
            if entry is None:
                empty = row if empty is None else empty
                continue
            if not (self.shared or entry.tenant == tenant):
                continue
            reuse = min(common_prefix(entry.tokens, query), limit)
            if reuse <= 0 or (not self.partial and reuse < len(entry.tokens)):
                continue  # nothing shared, or a recurrent state that would need rolling back
            key = (reuse, entry.used, row)
            if 2 * reuse >= len(prompt):
                strong = max(strong, key) if strong else key
            weak = max(weak, key) if weak else key
        if strong is not None:
            choice = Choice(strong[2], strong[0])
        elif empty is not None:
            choice = Choice(empty, 0)
        elif weak is not None:
            choice = Choice(weak[2], weak[0])
        else:
            oldest = min(free, key=lambda r: self.rows[r].used)  # type: ignore[union-attr]
            choice = Choice(oldest, 0)
        self.rows[choice.row] = None  # the new sequence owns the row now (and re-retains it when done)
        return choice
