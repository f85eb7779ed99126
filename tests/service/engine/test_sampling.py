from __future__ import annotations

import numpy as np

from service.engine.sampling import SamplingParams, adjust_logits, allowed_mask, apply_repetition_penalty, sample_token

# A controlled distribution: probabilities 0.4, 0.3, 0.15, 0.1, 0.05 on tokens 3, 0, 4, 1, 2.
PROBS = np.array([0.3, 0.1, 0.05, 0.4, 0.15])
LOGITS = np.log(PROBS)
NONE = np.zeros(0, dtype=np.int64)


def draws(params: SamplingParams, n: int = 2000) -> set[int]:
    rng = np.random.default_rng(params.seed)
    return {sample_token(LOGITS, params, rng, NONE) for _ in range(n)}


def test_top_k_never_leaves_the_k_best() -> None:
    assert draws(SamplingParams(temperature=1.0, top_k=2, seed=0)) == {3, 0}


def test_top_p_keeps_the_smallest_prefix_reaching_p() -> None:
    # 0.4 + 0.3 = 0.7 < 0.75, so the nucleus needs the third token (4) too.
    assert draws(SamplingParams(temperature=1.0, top_p=0.75, seed=0)) == {3, 0, 4}
    assert draws(SamplingParams(temperature=1.0, top_p=0.4, seed=0)) == {3}


def test_top_k_then_top_p() -> None:
    keep = allowed_mask(LOGITS, top_k=3, top_p=0.5)
    assert set(np.flatnonzero(keep)) == {3, 0}


def test_unrestricted_sampling_reaches_every_token_in_proportion() -> None:
    rng = np.random.default_rng(0)
    samples = [sample_token(LOGITS, SamplingParams(temperature=1.0), rng, NONE) for _ in range(4000)]
    freq = np.bincount(samples, minlength=5) / len(samples)
    assert np.allclose(freq, PROBS, atol=0.03)


def test_same_seed_same_sequence() -> None:
    p = SamplingParams(temperature=0.9, seed=42)
    a = [sample_token(LOGITS, p, np.random.default_rng(42), NONE) for _ in range(50)]
    b = [sample_token(LOGITS, p, np.random.default_rng(42), NONE) for _ in range(50)]
    assert a == b


def test_greedy_ignores_the_generator() -> None:
    assert sample_token(LOGITS, SamplingParams(temperature=0.0), np.random.default_rng(1), NONE) == 3


def test_repetition_penalty_demotes_seen_tokens() -> None:
    out = apply_repetition_penalty(np.array([2.0, -1.0, 0.5]), np.array([0, 1]), 2.0)
    assert out.tolist() == [1.0, -2.0, 0.5]
    assert sample_token(np.array([2.0, 1.5]), SamplingParams(repetition_penalty=2.0), None, np.array([0])) == 1


def test_logit_bias_moves_only_the_biased_tokens() -> None:
    params = SamplingParams(logit_bias=((1, 5.0), (3, -2.0)))
    out = adjust_logits(LOGITS, params, NONE)
    changed = np.flatnonzero(out != LOGITS)
    assert changed.tolist() == [1, 3] and np.allclose(out[[1, 3]], LOGITS[[1, 3]] + [5.0, -2.0])
    assert sample_token(LOGITS, params, None, NONE) == 1  # greedy follows the bias


def test_presence_and_frequency_penalties_follow_openais_formula() -> None:
    counts = np.array([0, 2, 0, 1, 0], np.int32)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = adjust_logits(LOGITS, params, NONE, counts)
    want = LOGITS - 0.25 * counts - 0.5 * (counts > 0)
    assert np.allclose(out, want)
    assert (out == LOGITS)[counts == 0].all()  # tokens not yet in the output are untouched


def test_min_p_keeps_tokens_at_least_that_likely_relative_to_the_best() -> None:
    keep = allowed_mask(LOGITS, top_k=0, top_p=1.0, min_p=0.5)  # p >= 0.5 * 0.4 = 0.2
    assert set(np.flatnonzero(keep)) == {3, 0}
    assert draws(SamplingParams(temperature=1.0, min_p=1.0, seed=0)) == {3}  # only the best survives


def test_banned_and_masked_tokens_are_never_drawn() -> None:
    banned = np.array([3, 0])
    allowed = np.array([True, True, False, True, True])
    rng = np.random.default_rng(0)
    got = {
        sample_token(LOGITS, SamplingParams(temperature=1.0), rng, NONE, banned=banned, allowed=allowed)
        for _ in range(500)
    }
    assert got == {1, 4}
