"""n-gram speculative decoding: greedy output is exactly plain decoding's, on both graph contracts
(conftest), and speculation happens only where it can pay."""

from __future__ import annotations

import time

import numpy as np
import pytest

from service.engine.observer import EngineObserver
from service.engine.sampling import SamplingParams
from service.engine.speculative import Acceptance, NgramLookup, SpecConfig, SpecCost, accepted_prefix
from tests.service.engine.test_engine import make_engine, request


def propose(tokens: list[int], cfg: SpecConfig) -> list[int]:
    return NgramLookup(list(tokens), cfg).propose()


def test_propose_takes_what_followed_the_latest_longest_match() -> None:
    cfg = SpecConfig(tokens=3, ngram_max=3, ngram_min=2)
    assert propose([5, 6, 7, 8, 9, 1, 5, 6, 7], cfg) == [8, 9, 1]  # 3-gram (5, 6, 7) seen before
    assert propose([1, 2, 3, 4, 1, 2, 9, 9, 1, 2], cfg) == [9, 9, 1]  # the latest (1, 2)
    assert propose([1, 2, 3, 4], cfg) == []  # nothing repeats
    assert propose([4, 1, 3, 1], cfg) == []  # a 1-gram match is below ngram_min
    # A match near the end: the copy runs on through its own guess (the loop the sequence is in).
    assert propose([7, 7, 7], SpecConfig(tokens=5, ngram_max=2, ngram_min=2)) == [7, 7, 7, 7, 7]
    assert propose([3, 1, 2, 1, 2], SpecConfig(tokens=5, ngram_max=2, ngram_min=2)) == [1, 2, 1, 2, 1]


def rescanned(tokens: list[int], cfg: SpecConfig) -> list[int]:
    """The definition, by brute force: scan every earlier n-gram, longest n first, latest first."""
    for n in range(cfg.ngram_max, cfg.ngram_min - 1, -1):
        for start in range(len(tokens) - 1 - n, -1, -1):
            if len(tokens) > n and tokens[start : start + n] == tokens[-n:]:
                text = list(tokens)  # copied from start + n on: through the end, then on into the guess
                while len(text) < len(tokens) + cfg.tokens:
                    text.append(text[start + n + len(text) - len(tokens)])
                return text[len(tokens) :]
    return []


def test_the_incremental_index_guesses_what_a_rescan_of_the_whole_sequence_would() -> None:
    """The index is built once and extended as the sequence grows, by one token or by several
    accepted at once, on a small alphabet so that matches of every size come and go."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        cfg = SpecConfig(tokens=int(rng.integers(1, 6)), ngram_max=int(rng.integers(2, 5)), ngram_min=2)
        tokens = rng.integers(0, 4, int(rng.integers(1, 30))).tolist()
        lookup = NgramLookup(tokens, cfg)
        for _ in range(60):
            assert lookup.propose() == rescanned(tokens, cfg), (trial, tokens)
            tokens.extend(rng.integers(0, 4, int(rng.integers(1, 4))).tolist())


def test_the_accepted_prefix_is_where_greedy_first_disagrees() -> None:
    logits = np.eye(6)[[3, 4, 5, 1]]  # greedy picks 3, 4, 5, then 1
    assert accepted_prefix(logits, [3, 4, 0]) == 2
    assert accepted_prefix(logits, [3, 4, 5]) == 3
    assert accepted_prefix(logits, [2, 4, 5]) == 0


def test_a_sequence_that_keeps_missing_gives_up() -> None:
    record = Acceptance(SpecConfig(probe_steps=4, min_acceptance=0.5))
    for _ in range(4):
        assert record.worthwhile
        record.record(4, 1)
    assert not record.worthwhile


def costs(decode_s: float, verify_s: float, calls: int = 5) -> SpecCost:
    cost = SpecCost()
    for _ in range(calls):
        cost.saw_decode(decode_s)
        cost.saw_verify(verify_s)
    return cost


def test_guesses_must_pay_for_their_verify_calls() -> None:
    record = Acceptance(SpecConfig(probe_steps=2))
    cost = costs(0.001, 0.003)  # a verify call costs three decode steps
    record.record(4, 1)
    assert cost.pays(record)  # still being judged
    record.record(4, 2)  # 1.5 accepted per call: 2.5 tokens per call, less than the 3 it costs
    assert record.worthwhile and not cost.pays(record)
    record.record(4, 4)
    record.record(4, 4)  # 2.75 accepted per call: 3.75 tokens for the price of 3
    assert cost.pays(record)
    assert SpecCost().pays(record)  # nothing measured yet: no reason to stop


def test_one_preempted_call_does_not_change_the_verdict() -> None:
    """A verify call the OS descheduled for 50 ms, among calls of 1.5 ms: a moving average took it
    in as a 10 ms verify call, and a sequence accepting 1.5 guesses per call stopped guessing."""
    record = Acceptance(SpecConfig(probe_steps=1))
    record.record(4, 2)  # 3 tokens per call
    cost = costs(0.001, 0.0015)
    cost.saw_verify(0.05)
    assert cost.pays(record) and cost.verify_s == 0.0015
    cost.saw_decode(0.02)  # and a preempted decode step does not make guessing look cheaper
    assert cost.decode_s == 0.001


def test_a_sequence_stopped_for_cost_measures_again_now_and_then() -> None:
    record = Acceptance(SpecConfig(probe_steps=1))
    record.record(4, 0)  # 1 token per call
    cost = costs(0.001, 0.004)
    verdicts = [cost.pays(record) for _ in range(3 * cost.reprobe_every)]
    assert verdicts.count(True) == 3 and verdicts[cost.reprobe_every - 1]


class Counting(EngineObserver):
    def __init__(self) -> None:
        self.steps = self.proposed = self.accepted = 0

    def speculation(self, model: str, proposed: int, accepted: int) -> None:
        self.steps += 1
        self.proposed += proposed
        self.accepted += accepted


def engine_for(repo, spec: SpecConfig | None, observer: EngineObserver | None = None, max_batch: int = 3):  # type: ignore[no-untyped-def]
    _, runner, engine = make_engine(repo, max_batch, 256, observer=observer, speculative=spec, prefix_cache=True)
    assert runner.can_verify  # both contracts score every position of a guess in one call
    return engine


def run(engine, prompt, n, **kw):  # type: ignore[no-untyped-def]
    req, collector = request(prompt, n, ignore_eos=True, **kw)
    engine.submit(req)
    return collector.wait()


GROUNDED = [1, *([40, 41, 42, 43, 44, 45] * 4)]  # code that repeats itself: guesses get confirmed
RANDOM = [1, *np.random.default_rng(9).integers(3, 300, size=24).tolist()]


@pytest.fixture(scope="module")
def plain(tiny_lm_repo):  # type: ignore[no-untyped-def]
    engine = engine_for(tiny_lm_repo, None)
    engine.start()
    yield engine
    engine.stop()


@pytest.mark.parametrize("prompt", [GROUNDED, RANDOM], ids=["grounded", "open-ended"])
def test_greedy_with_guesses_is_exactly_plain_greedy(tiny_lm_repo, plain, prompt) -> None:  # type: ignore[no-untyped-def]
    observer = Counting()
    engine = engine_for(tiny_lm_repo, SpecConfig(), observer)
    engine.start()
    try:
        want, _ = run(plain, prompt, 60)
        got, fin = run(engine, prompt, 60)
        assert got == want and fin.completion_tokens == 60
        assert observer.steps > 0 and observer.accepted > 0  # it really guessed, and was right sometimes
        # And the slot it leaves behind is exact too: a follow-up that reuses it continues exactly.
        follow = [*prompt, *got[:20]]
        assert run(engine, follow, 10)[0] == run(plain, follow, 10)[0]
    finally:
        engine.stop()


def test_limits_hold_inside_an_accepted_guess(tiny_lm_repo, plain) -> None:  # type: ignore[no-untyped-def]
    engine = engine_for(tiny_lm_repo, SpecConfig(tokens=8))
    engine.start()
    try:
        for n in (1, 2, 5, 9):
            got, fin = run(engine, GROUNDED, n)
            assert len(got) == n == fin.completion_tokens and got == run(plain, GROUNDED, n)[0]
    finally:
        engine.stop()


def test_no_guessing_in_a_batch_or_when_sampling(tiny_lm_repo) -> None:  # type: ignore[no-untyped-def]
    observer = Counting()
    engine = engine_for(tiny_lm_repo, SpecConfig(), observer)
    engine.start()
    try:
        run(engine, GROUNDED, 20, sampling=SamplingParams(temperature=1.0, seed=1))
        assert observer.steps == 0
        reqs = [request(GROUNDED, 40, ignore_eos=True) for _ in range(2)]
        for r, _ in reqs:
            engine.submit(r)
        for _, c in reqs:
            c.wait()
        assert observer.steps <= 2  # only around the moments one of them ran alone
    finally:
        engine.stop()


def test_a_sequence_that_keeps_missing_stops_guessing(tiny_lm_repo, plain) -> None:  # type: ignore[no-untyped-def]
    observer = Counting()
    engine = engine_for(tiny_lm_repo, SpecConfig(probe_steps=3, min_acceptance=1.1), observer)  # never good enough
    engine.start()
    try:
        got, _ = run(engine, GROUNDED, 60)
        assert got == run(plain, GROUNDED, 60)[0] and observer.steps == 3
    finally:
        engine.stop()


def test_right_guesses_that_cost_more_than_they_save_stop(tiny_lm_repo, plain) -> None:  # type: ignore[no-untyped-def]
    """Acceptance alone would keep guessing on GROUNDED; a verify call made slower than the tokens
    it yields (as on a model whose steps are all per-call overhead) must end it after the probe."""
    observer = Counting()
    engine = engine_for(tiny_lm_repo, SpecConfig(probe_steps=3), observer)
    verify = engine.runner.verify

    def slow_verify(row, token_ids):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        return verify(row, token_ids)

    engine.runner.verify = slow_verify
    engine.start()
    try:
        got, _ = run(engine, GROUNDED, 60)
        assert got == run(plain, GROUNDED, 60)[0]
        # Right guesses, and still it stopped after the probe: only the re-measuring guesses follow.
        assert observer.accepted > 0 and observer.steps <= 3 + 60 // engine.spec_cost.reprobe_every
        assert engine.spec_cost.verify_s > 10 * engine.spec_cost.decode_s
    finally:
        engine.stop()


def test_one_slow_verify_call_does_not_stop_guesses_that_pay(tiny_lm_repo, plain) -> None:  # type: ignore[no-untyped-def]
    """Calls padded to 4 ms (decode) and 5 ms (verify), so right guesses pay whatever the machine;
    the second verify call takes 300 ms, as one the OS preempted might. The moving average this
    replaced read that as 50 ms per call and stopped the sequence after its probe."""
    observer = Counting()
    engine = engine_for(tiny_lm_repo, SpecConfig(probe_steps=3), observer)
    decode, verify = engine.runner.decode, engine.runner.verify
    verify_calls = []

    def padded_decode(last):  # type: ignore[no-untyped-def]
        time.sleep(0.004)
        return decode(last)

    def padded_verify(row, token_ids):  # type: ignore[no-untyped-def]
        verify_calls.append(row)
        time.sleep(0.3 if len(verify_calls) == 2 else 0.005)
        return verify(row, token_ids)

    engine.runner.decode, engine.runner.verify = padded_decode, padded_verify
    engine.start()
    try:
        got, _ = run(engine, GROUNDED, 60)
        assert got == run(plain, GROUNDED, 60)[0]
        assert observer.steps > 3 + 60 // engine.spec_cost.reprobe_every  # more than a stopped sequence's
    finally:
        engine.stop()
