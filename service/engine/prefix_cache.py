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

With `KILN_PREFIX_CACHE_BYTES` the slots get a second tier in host memory (`HostStore`): a
prompt that takes a slot whose cached positions it cannot use parks them in a host row first
(over a parked copy of the same prefix, else in the least recently used host row), and a
prompt whose longest match is parked gets it copied back into its slot instead of prefilling
it. The same tenant rule applies. Only attention KV is parked (the fused graph's runner); a
recurrent state stays in its slot.
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
    evicted: Entry | None = None  # what the row held before (it keeps only `reuse` positions of it)


class LogicalClock:
    """Recency for least-recently-used choices: each tick is later than every earlier one."""

    def __init__(self) -> None:
        self.now = 0

    def tick(self) -> int:
        self.now += 1
        return self.now


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
        self._clock = LogicalClock()

    def retain(self, row: int, tokens: list[int] | np.ndarray, tenant: str) -> None:
        """The slot keeps a finished sequence's positions."""
        self.rows[row] = Entry(np.asarray(tokens, np.int64), tenant, self._clock.tick()) if len(tokens) else None

    def forget(self, row: int) -> None:
        self.rows[row] = None

    def swap(self, a: int, b: int) -> None:
        """The slots' contents were swapped (the engine compacts its rows)."""
        self.rows[a], self.rows[b] = self.rows[b], self.rows[a]

    def choose(self, free: range, prompt: list[int], tenant: str) -> Choice:
        """The free row for `prompt` and how many of its positions it can reuse.

        Taking a row destroys what it holds beyond the reused part, so a hit that covers less
        than half of the new prompt (often just BOS) goes to an empty row instead, as llama.cpp's
        slot similarity does; with no empty row the longest hit (of equal ones the least recently
        used: taking it destroys it), else the least recently used.
        """
        query = np.asarray(prompt, np.int64)
        limit = len(prompt) - 1  # the last prompt token is always computed: its logits are needed
        strong: tuple[int, int, int] | None = None  # (reuse, used, row): covers half the prompt or more
        weak: tuple[int, int, int] | None = None  # any hit: (reuse, -used, row)
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
            if 2 * reuse >= len(prompt):
                key = (reuse, entry.used, row)
                strong = max(strong, key) if strong else key
            key = (reuse, -entry.used, row)  # the longest; of equal ones the stalest: it is destroyed
            weak = max(weak, key) if weak else key
        if strong is not None:
            row, reuse = strong[2], strong[0]
        elif empty is not None:
            row, reuse = empty, 0
        elif weak is not None:
            row, reuse = weak[2], weak[0]
        else:
            row, reuse = min(free, key=lambda r: self.rows[r].used), 0  # type: ignore[union-attr]
        evicted, self.rows[row] = self.rows[row], None  # the new sequence owns the row (re-retains it when done)
        return Choice(row, reuse, evicted)


def longest_match(entries: list[Entry | None], prompt: list[int], tenant: str, shared: bool) -> tuple[int, int]:
    """(index, reuse) of the entry sharing the longest prefix with `prompt` (at most all but its
    last token), most recent first among equals; (-1, 0) when none shares anything."""
    query = np.asarray(prompt, np.int64)
    best = (0, 0, -1)  # (reuse, used, index)
    for i, entry in enumerate(entries):
        if entry is None or not (shared or entry.tenant == tenant):
            continue
        reuse = min(common_prefix(entry.tokens, query), len(prompt) - 1)
        if reuse > 0 and (reuse, entry.used) > best[:2]:
            best = (reuse, entry.used, i)
    return best[2], best[0]


class HostStore:
    """Which parked prefix each host row holds (the runner holds the positions themselves)."""

    def __init__(self, rows: int, shared: bool = False) -> None:
        self.rows: list[Entry | None] = [None] * rows
        self.shared = shared
        self._clock = LogicalClock()

    def slot_for(self, entry: Entry) -> int:
        """The host row `entry` should be parked in: the one of the same tenant sharing at least
        half its positions with it (the same system prompt or an earlier turn of the chat: one
        copy of a shared prefix, not one per request), else an empty one, else the least
        recently used."""
        best, best_shared = -1, 0
        for i, held in enumerate(self.rows):
            if held is None or held.tenant != entry.tenant:
                continue
            shared = common_prefix(held.tokens, entry.tokens)
            if 2 * shared >= len(held.tokens) and shared > best_shared:
                best, best_shared = i, shared
        if best >= 0:
            return best
        empty = next((i for i, held in enumerate(self.rows) if held is None), None)
        if empty is not None:
            return empty
        return min(range(len(self.rows)), key=lambda i: self.rows[i].used)  # type: ignore[union-attr]

    def put(self, slot: int, entry: Entry) -> None:
        self.rows[slot] = Entry(entry.tokens, entry.tenant, self._clock.tick())

    def lookup(self, prompt: list[int], tenant: str) -> tuple[int, int]:
        """(host row, reuse) of the longest parked match for `prompt`, or (-1, 0)."""
        return longest_match(self.rows, prompt, tenant, self.shared)

    def restored(self, slot: int) -> None:
        """Host row `slot` served a prompt: the most recently used now."""
        self.rows[slot].used = self._clock.tick()  # type: ignore[union-attr]
