"""The sampling parameters users expect, in the engine: each changes what it should, and a
request's tokens are the same alone and inside a busy batch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from service.engine.sampling import SamplingParams
from tests.service.engine.test_engine import PROMPT, make_engine, request


def run_alone_and_busy(repo, make_request) -> tuple[list[int], list[int], object]:  # type: ignore[no-untyped-def]
    _, _, engine = make_engine(repo, max_batch=4)
    engine.start()
    try:
        r, c = make_request()
        engine.submit(r)
        alone, fin = c.wait()
        rng = np.random.default_rng(5)
        neighbours = []
        for k in range(3):
            prompt = [1, *rng.integers(3, 300, size=4 + 3 * k).tolist()]
            nr, nc = request(prompt, 12 + 5 * k, SamplingParams(temperature=1.0, seed=k), ignore_eos=True)
            engine.submit(nr)
            neighbours.append(nc)
        r2, c2 = make_request()
        engine.submit(r2)
        busy, _ = c2.wait()
        for nc in neighbours:
            nc.wait()
    finally:
        engine.stop()
    return alone, busy, fin


EOS = 2
CASES = {
    "presence": dict(sampling=SamplingParams(temperature=1.0, presence_penalty=1.5, seed=1)),
    "frequency": dict(sampling=SamplingParams(temperature=0.0, frequency_penalty=2.0)),
    "min_p": dict(sampling=SamplingParams(temperature=1.5, min_p=0.2, seed=2)),
    "logit_bias": dict(sampling=SamplingParams(temperature=1.0, logit_bias=((40, 3.0), (41, -100.0)), seed=3)),
    "min_tokens": dict(sampling=SamplingParams(logit_bias=((EOS, 100.0),)), min_tokens=5),
    "stop_token_ids": dict(sampling=SamplingParams(logit_bias=((44, 4.0),)), stop_token_ids=frozenset({44})),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_parameter_is_batch_invariant(tiny_lm_repo, case: str) -> None:  # type: ignore[no-untyped-def]
    kwargs = CASES[case]
    alone, busy, _ = run_alone_and_busy(tiny_lm_repo, lambda: request(PROMPT, 20, **kwargs))
    assert alone == busy


def test_frequency_penalty_breaks_a_greedy_loop(tiny_lm_repo) -> None:  # type: ignore[no-untyped-def]
    plain, _, _ = run_alone_and_busy(tiny_lm_repo, lambda: request(PROMPT, 30, ignore_eos=True))
    kwargs = dict(sampling=SamplingParams(frequency_penalty=2.0), ignore_eos=True)
    penalised, _, _ = run_alone_and_busy(tiny_lm_repo, lambda: request(PROMPT, 30, **kwargs))
    assert max(Counter(penalised).values()) < max(Counter(plain).values())
    assert penalised[0] == plain[0]  # nothing is in the output before the first token: no change there


def test_min_tokens_holds_eos_back_then_lets_it_end(tiny_lm_repo) -> None:  # type: ignore[no-untyped-def]
    kwargs = CASES["min_tokens"]
    tokens, _, fin = run_alone_and_busy(tiny_lm_repo, lambda: request(PROMPT, 20, **kwargs))
    assert fin.reason == "eos" and len(tokens) == 5 and EOS not in tokens  # type: ignore[attr-defined]
    no_min, _, fin2 = run_alone_and_busy(tiny_lm_repo, lambda: request(PROMPT, 20, sampling=kwargs["sampling"]))
    assert fin2.reason == "eos" and no_min == []  # type: ignore[attr-defined]


def test_a_stop_token_ends_the_sequence_unseen(tiny_lm_repo) -> None:  # type: ignore[no-untyped-def]
    biased = SamplingParams(logit_bias=((44, 100.0),))
    tokens, _, fin = run_alone_and_busy(
        tiny_lm_repo, lambda: request(PROMPT, 20, sampling=biased, stop_token_ids=frozenset({44}))
    )
    assert fin.reason == "stop" and tokens == [] and fin.completion_tokens == 1  # type: ignore[attr-defined]
    free, _, _ = run_alone_and_busy(tiny_lm_repo, lambda: request(PROMPT, 5, sampling=biased, ignore_eos=True))
    assert free == [44] * 5
