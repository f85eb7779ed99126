"""Prefix caching in the engine: a hit reuses a finished sequence's positions and the greedy
tokens are exactly those without the cache, for prefixes of every length and the edge cases.

Runs on both graph contracts (conftest): the fused runner reuses prefixes; the standard runner
declares it cannot (its attention capacity follows the longest held row), and there the cache
stays off — the tests check that too.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.sampling import SamplingParams
from tests.service.engine.test_engine import make_engine, request


def engine_for(repo, cache: bool, max_batch: int = 3, prefill_tokens: int = 16, shared: bool = False):  # type: ignore[no-untyped-def]
    _, runner, engine = make_engine(
        repo, max_batch, 256, 16, prefill_tokens=prefill_tokens, prefix_cache=cache, prefix_cache_shared=shared
    )
    return runner, engine


def generate(engine, prompt, n: int = 12, tenant: str = ""):  # type: ignore[no-untyped-def]
    req, collector = request(prompt, n, ignore_eos=True, tenant=tenant)
    engine.submit(req)
    return collector.wait()


@pytest.fixture
def cached(tiny_lm_repo):  # type: ignore[no-untyped-def]
    runner, engine = engine_for(tiny_lm_repo, cache=True)
    if runner.prefix_reuse == "none":
        assert engine.cache is None
        pytest.skip("this runner does not reuse prefixes (the standard graph)")
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def reference(tiny_lm_repo):  # type: ignore[no-untyped-def]
    """Greedy tokens with no cache at all, by prompt."""
    _, engine = engine_for(tiny_lm_repo, cache=False)
    engine.start()
    memo: dict[tuple[int, ...], list[int]] = {}

    def tokens(prompt: list[int], n: int = 12) -> list[int]:
        key = (*prompt, -n)
        if key not in memo:
            memo[key] = generate(engine, prompt, n)[0]
        return memo[key]

    yield tokens
    engine.stop()


def test_random_prompt_pairs_sharing_prefixes_of_every_length(cached, reference) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    for shared_len in (1, 2, 5, 17, 33, 60):
        base = [1, *rng.integers(3, 300, size=shared_len - 1).tolist()] if shared_len > 1 else [1]
        first = base + rng.integers(3, 300, size=int(rng.integers(1, 8))).tolist()
        second = base + rng.integers(3, 300, size=int(rng.integers(1, 8))).tolist()
        assert generate(cached, first)[0] == reference(first)
        tokens, fin = generate(cached, second)
        assert tokens == reference(second), shared_len
        assert fin.cached_tokens <= len(second) - 1  # never the last prompt token
        if 2 * shared_len >= len(second):  # a hit covering half the prompt is taken (the slot choice's rule)
            assert fin.cached_tokens >= shared_len


def test_a_full_match_and_a_match_minus_one(cached, reference) -> None:  # type: ignore[no-untyped-def]
    prompt = [1, 40, 41, 42, 43, 44, 45, 46]
    generate(cached, prompt)
    again, fin = generate(cached, prompt)  # everything cached but the last token, recomputed for its logits
    assert again == reference(prompt) and fin.cached_tokens == len(prompt) - 1
    shorter, fin = generate(cached, prompt[:-1])
    assert shorter == reference(prompt[:-1]) and fin.cached_tokens == len(prompt) - 2
    # Continuing a finished turn: its output is cached too (a growing chat history).
    turn, _ = generate(cached, prompt)
    history = [*prompt, *turn[:-1], 50, 51]
    extended, fin = generate(cached, history)
    assert extended == reference(history) and fin.cached_tokens == len(prompt) + len(turn) - 1


def test_a_hit_with_chunked_prefill_of_the_rest_while_others_decode(tiny_lm_repo, reference) -> None:  # type: ignore[no-untyped-def]
    runner, engine = engine_for(tiny_lm_repo, cache=True, prefill_tokens=3)
    if runner.prefix_reuse == "none":
        pytest.skip("this runner does not reuse prefixes (the standard graph)")
    engine.start()
    try:
        base = [1, *np.random.default_rng(2).integers(3, 300, size=30).tolist()]
        generate(engine, base + [7])
        busy_req, busy = request([1, 2, 3], 60, ignore_eos=True)
        engine.submit(busy_req)  # decoding the whole time: the hit's rest is prefilled 3 tokens per step
        busy.events.get(timeout=10)
        follow = base + [9, 10, 11, 12, 13, 14, 15]
        tokens, fin = generate(engine, follow)
        busy.wait()
    finally:
        engine.stop()
    assert tokens == reference(follow) and fin.cached_tokens == len(base)


def test_two_prompts_racing_for_one_cached_row(cached, reference) -> None:  # type: ignore[no-untyped-def]
    """The first admitted takes the row (and overwrites it past the shared part); the second must
    not reuse what is no longer there."""
    base = [1, 60, 61, 62, 63, 64, 65, 66, 67]
    generate(cached, base + [5])
    a, b = base + [70, 71], base + [80, 81, 82]
    req_a, col_a = request(a, 12, ignore_eos=True)
    req_b, col_b = request(b, 12, ignore_eos=True)
    cached.submit(req_a)
    cached.submit(req_b)
    tokens_a, fin_a = col_a.wait()
    tokens_b, fin_b = col_b.wait()
    assert tokens_a == reference(a) and tokens_b == reference(b)
    assert fin_a.cached_tokens == len(base) and fin_b.cached_tokens == 0


def test_a_prefix_serves_only_its_own_tenant_unless_shared(tiny_lm_repo, reference) -> None:  # type: ignore[no-untyped-def]
    prompt = [1, 90, 91, 92, 93, 94, 95]
    for shared, other_hit in ((False, 0), (True, len(prompt))):
        runner, engine = engine_for(tiny_lm_repo, cache=True, shared=shared)
        if runner.prefix_reuse == "none":
            pytest.skip("this runner does not reuse prefixes (the standard graph)")
        engine.start()
        try:
            generate(engine, prompt, tenant="key-a")
            follow = [*prompt, 3, 4]
            tokens, fin = generate(engine, follow, tenant="key-b")
            assert tokens == reference(follow) and fin.cached_tokens == other_hit
            _, own = generate(engine, [*prompt, 5, 6], tenant="key-a")
            assert own.cached_tokens == len(prompt)
        finally:
            engine.stop()


def test_sampled_neighbours_do_not_disturb_a_cached_greedy_run(cached, reference) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    prompt = [1, *rng.integers(3, 300, size=20).tolist()]
    generate(cached, prompt)
    others = []
    for k in range(2):
        r, c = request([1, *rng.integers(3, 300, size=5 + k).tolist()], 15, SamplingParams(temperature=1.0, seed=k))
        cached.submit(r)
        others.append(c)
    follow = [*prompt, 8]
    tokens, fin = generate(cached, follow)
    for c in others:
        c.wait()
    assert tokens == reference(follow) and fin.cached_tokens == len(prompt)
