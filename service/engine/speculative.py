"""Speculative decoding without a draft model: n-gram prompt lookup.

As vLLM's `ngram` method and transformers' `prompt_lookup_num_tokens`: when a sequence's last
n tokens occurred earlier in its prompt or output, the k tokens that followed them then are a
cheap guess at what follows now (code that repeats names, edits that copy their input). One
forward pass over the last token and the guess scores every position; the longest prefix of
the guess that greedy decoding would have chosen is kept, plus the model's own next token, and
the slot is rolled back past the rest. Greedy output is therefore exactly what plain decoding
gives. Only greedy requests speculate (a sampled request would need the acceptance rule for
its distribution); a sequence whose guesses keep failing stops guessing, and so does one whose
guesses, right as they may be, do not pay for the verify calls on this model and machine
(`SpecCost`: a verify call scores k + 1 positions, which on a tiny model dominated by per-call
overhead costs several decode steps; on a bandwidth-bound one about one).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpecConfig:
    tokens: int = 4  # k: the most tokens guessed per step
    ngram_max: int = 3  # the longest suffix looked up
    ngram_min: int = 2  # the shortest (1 would match almost anything)
    probe_steps: int = 8  # guesses judged before a sequence may give up
    min_acceptance: float = 0.25  # below this share of guessed tokens accepted, it gives up


class NgramLookup:
    """One sequence's n-gram index: every n-gram that ends before its last token, mapped to the
    position after its latest occurrence. A sequence only grows (rejected guesses never enter
    it), so each step indexes just the tokens added since the last, and a guess is a dictionary
    lookup per n-gram size: rescanning the whole sequence every step cost a third of a decode
    step on the demo LM."""

    def __init__(self, tokens: list[int], config: SpecConfig) -> None:
        self.tokens = tokens  # the sequence's own list: prompt, then every token it took
        self.config = config
        self.sizes = range(config.ngram_max, config.ngram_min - 1, -1)  # longest first
        self.follows: dict[tuple[int, ...], int] = {}  # tuple lengths keep the sizes apart
        self.indexed = 0  # n-grams ending before this position are in `follows`

    def propose(self) -> list[int]:
        """The k tokens that followed the latest earlier occurrence of the longest matching suffix."""
        tokens, last = self.tokens, len(self.tokens) - 1
        for end in range(self.indexed, last):  # later occurrences overwrite earlier ones
            for n in self.sizes:
                if end + 1 >= n:
                    self.follows[tuple(tokens[end + 1 - n : end + 1])] = end + 1
        self.indexed = max(self.indexed, last)
        for n in self.sizes:
            if len(tokens) > n:
                start = self.follows.get(tuple(tokens[-n:]))
                if start is not None:
                    return self._copy_from(start)
        return []

    def _copy_from(self, start: int) -> list[int]:
        """k tokens copied from `start` on. A match close to the end (the model in a loop, a run of
        repeated lines) has fewer than k tokens after it; the copy then goes on through its own
        guess, since what it copies is the text the guess repeats. Stopping at the end left 2-token
        guesses in exactly the sequences that repeat most (measured on the demo LM's loops)."""
        draft = self.tokens[start : start + self.config.tokens]
        period = len(self.tokens) - start  # the source runs to the end, then on into the draft
        while len(draft) < self.config.tokens:
            draft.append(draft[len(draft) - period])
        return draft


class Acceptance:
    """One sequence's record: how much of what it guessed the model confirmed."""

    def __init__(self, config: SpecConfig) -> None:
        self.config = config
        self.steps = self.proposed = self.accepted = 0
        self.declined = 0  # steps SpecCost turned it down for cost

    @property
    def worthwhile(self) -> bool:
        if self.steps < self.config.probe_steps:
            return True
        return self.accepted >= self.config.min_acceptance * self.proposed

    def record(self, proposed: int, accepted: int) -> None:
        self.steps += 1
        self.proposed += proposed
        self.accepted += accepted


class SpecCost:
    """What a verify call costs against a plain batch-1 decode step here, and whether a sequence's
    record pays for it: a verify call yields 1 + (accepted per call) tokens where a decode step
    yields 1.

    Each cost is the median of its latest `window` calls, measured by the engine as it runs. Not a
    moving average: one call the OS preempted (a busy neighbour, a page fault) takes ten times a
    normal one, and on a shared 2-core machine an average that took in one such verify call told
    the sequence then being judged that guessing never pays, for the rest of its life. A sequence
    that has stopped for cost still guesses once every `reprobe_every` steps, so a verdict reached
    under load is measured again rather than kept."""

    def __init__(self, window: int = 15, reprobe_every: int = 16) -> None:
        self.reprobe_every = reprobe_every
        self._decode: deque[float] = deque(maxlen=window)
        self._verify: deque[float] = deque(maxlen=window)

    @property
    def decode_s(self) -> float | None:
        return _median(self._decode)

    @property
    def verify_s(self) -> float | None:
        return _median(self._verify)

    def saw_decode(self, seconds: float) -> None:
        self._decode.append(seconds)

    def saw_verify(self, seconds: float) -> None:
        self._verify.append(seconds)

    def pays(self, record: Acceptance) -> bool:
        """True while the record is still being judged, while either cost is unknown, and on every
        `reprobe_every`-th step the record has been turned down (counted in `record.declined`)."""
        decode_s, verify_s = self.decode_s, self.verify_s
        if record.steps < record.config.probe_steps or decode_s is None or verify_s is None:
            return True
        if (1 + record.accepted / record.steps) * decode_s >= verify_s:
            return True
        record.declined += 1
        return record.declined % self.reprobe_every == 0


def _median(samples: deque[float]) -> float | None:
    return sorted(samples)[len(samples) // 2] if samples else None


def accepted_prefix(logits: np.ndarray, draft: list[int]) -> int:
    """How many leading draft tokens are greedy decoding's own choices (logits [len(draft)+1, V])."""
    choices = np.argmax(logits[: len(draft)], axis=-1)
    mismatch = np.flatnonzero(choices != np.asarray(draft))
    return int(mismatch[0]) if mismatch.size else len(draft)
