"""One request's state while it holds a slot, and how its next token is chosen.

Everything a sequence needs per step is allocated at admission (the token statistics are
vocabulary-sized arrays), so a step allocates nothing proportional to the sequence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

import numpy as np
from numpy.random import default_rng  # imported now: numpy loads it lazily, ~20 ms on first use

from service.engine.detokenize import StreamDecoder
from service.engine.request import GenerationRequest
from service.engine.sampling import sample_token
from service.engine.speculative import Acceptance, NgramLookup, SpecConfig

_EMPTY = np.zeros(0, dtype=np.int64)


class ActiveSequence:
    def __init__(
        self,
        req: GenerationRequest,
        decode: Callable[[Sequence[int]], str],
        vocab: int,
        eos: Collection[int],
        spec: SpecConfig | None = None,
    ) -> None:
        self.req = req
        self.decoder = StreamDecoder(decode, req.stop)
        self.rng = default_rng(req.sampling.seed)
        self.seen = np.zeros(vocab, dtype=bool)  # prompt and output (repetition penalty)
        self.seen[[t for t in req.prompt_ids if 0 <= t < vocab]] = True
        params = req.sampling
        self.counts = np.zeros(vocab, np.int32) if params.presence_penalty or params.frequency_penalty else None
        ends = set(eos) | set(req.stop_token_ids)
        self.ends_early = np.array(sorted(t for t in ends if 0 <= t < vocab), np.int64)  # banned before min_tokens
        self.constraint = req.constraint
        self.fast_greedy = params.greedy and not params.shapes_logits and not req.min_tokens and not self.constraint
        self.generated = 0
        self.last_token = -1
        self.admitted = time.monotonic()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.prefilled = 0  # prompt tokens already in the slot's state
        self.cached = 0  # of those, reused from a finished sequence's slot (prefix caching)
        self.tokens = list(req.prompt_ids)  # prompt and output: what the slot holds, and one more
        self.acceptance = Acceptance(spec or SpecConfig())  # speculative decoding's record
        self.lookup = NgramLookup(self.tokens, spec or SpecConfig())  # its guesses (indexed when first asked)

    def choose(self, logits: np.ndarray) -> int:
        """The next token under the request's sampling, bans and constraint."""
        if self.fast_greedy:
            return int(logits.argmax())  # what sample_token returns, without the float64 copy or np.argmax's wrapper
        params = self.req.sampling
        seen = np.flatnonzero(self.seen) if params.repetition_penalty != 1.0 else _EMPTY
        banned = self.ends_early if self.generated < self.req.min_tokens else None
        allowed = None
        if self.constraint is not None:
            self.constraint.prepare()  # a no-op when the engine computed it during the step
            allowed = self.constraint.allowed()
        return sample_token(logits, params, self.rng, seen, self.counts, banned, allowed)

    def took(self, token: int) -> None:
        self.tokens.append(token)
        self.last_token = token
        self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1
        if self.constraint is not None:
            self.constraint.advance(token)
        self.generated += 1
