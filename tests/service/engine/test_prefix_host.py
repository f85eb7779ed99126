"""The prefix cache's host tier (KILN_PREFIX_CACHE_BYTES): a prefix whose slot another prompt
takes is parked in host memory and copied back for a prompt that shares it, with greedy output
exactly as without any cache, within the tenant rule and the byte budget.

One slot (max_batch=1), so every new prompt takes the slot the last one left its prefix in.
"""

from __future__ import annotations

import numpy as np
import pytest

from contracts.manifest import TextManifest
from service.backends.ort_runner import state_bytes
from service.engine.observer import EngineObserver
from service.engine.prefix_cache import Entry, HostStore
from tests.service.engine.test_engine import make_engine
from tests.service.engine.test_prefix_reuse import generate

rng = np.random.default_rng(3)
SYSTEM = [1, *rng.integers(3, 300, size=40).tolist()]  # a shared "system prompt"
OTHER = [1, *rng.integers(3, 300, size=40).tolist()]


class Moves(EngineObserver):
    def __init__(self) -> None:
        self.moved: dict[str, int] = {"parked": 0, "restored": 0}

    def prefix_host(self, model: str, direction: str, tokens: int) -> None:
        self.moved[direction] += tokens


def one_slot_engine(repo, host_rows: int, observer: EngineObserver | None = None):  # type: ignore[no-untyped-def]
    manifest = TextManifest.read(next(repo.glob("*/kiln.json")).parent)
    budget = host_rows * state_bytes(manifest.state, 1, 128)  # one slot's bytes: one host row's
    _, runner, engine = make_engine(repo, 1, 128, observer=observer, prefix_cache=True, prefix_cache_bytes=budget)
    if runner.prefix_reuse != "partial":
        pytest.skip("only attention KV is parked (the fused graph's runner)")
    engine.start()
    return engine


@pytest.fixture(scope="module")
def plain(tiny_lm_repo):  # type: ignore[no-untyped-def]
    _, _, engine = make_engine(tiny_lm_repo, 1, 128)
    engine.start()
    yield engine
    engine.stop()


def test_a_parked_prefix_comes_back_exactly(tiny_lm_repo, plain) -> None:  # type: ignore[no-untyped-def]
    moves = Moves()
    engine = one_slot_engine(tiny_lm_repo, host_rows=3, observer=moves)
    try:
        assert len(engine.host.rows) == 3  # the budget held three rows
        generate(engine, SYSTEM + [7, 8])
        generate(engine, OTHER + [9])  # takes the slot: the system prompt's positions are parked
        assert moves.moved["parked"] >= len(SYSTEM) + 2
        question = SYSTEM + [11, 12, 13]
        tokens, fin = generate(engine, question)
        assert fin.cached_tokens == len(SYSTEM)  # from host memory, not prefilled
        assert moves.moved["restored"] == len(SYSTEM)
        assert tokens == generate(plain, question)[0]  # exactly the uncached greedy tokens
        tokens, fin = generate(engine, OTHER + [9, 4])  # parked when the question took the slot
        assert fin.cached_tokens > len(OTHER) and tokens == generate(plain, OTHER + [9, 4])[0]
    finally:
        engine.stop()


def test_parked_prefixes_keep_to_their_tenant(tiny_lm_repo) -> None:  # type: ignore[no-untyped-def]
    engine = one_slot_engine(tiny_lm_repo, host_rows=3)
    try:
        generate(engine, SYSTEM + [7], tenant="a")
        generate(engine, OTHER + [9], tenant="a")
        assert generate(engine, SYSTEM + [5, 6], tenant="b")[1].cached_tokens == 0
        assert generate(engine, SYSTEM + [5, 6], tenant="a")[1].cached_tokens == len(SYSTEM)
    finally:
        engine.stop()


def test_many_requests_on_one_system_prompt_keep_one_copy(tiny_lm_repo) -> None:  # type: ignore[no-untyped-def]
    engine = one_slot_engine(tiny_lm_repo, host_rows=2)
    try:
        for tail in ([7], [8], [9]):  # each takes the slot and parks the previous request's positions
            generate(engine, SYSTEM + tail)
            generate(engine, OTHER + tail)
        parked = [e for e in engine.host.rows if e is not None]
        assert len(parked) == 2  # one per system prompt, not the latest two requests
        assert generate(engine, SYSTEM + [5])[1].cached_tokens == len(SYSTEM)
        assert generate(engine, OTHER + [5])[1].cached_tokens == len(OTHER)
    finally:
        engine.stop()


def test_the_least_recently_used_parked_prefix_gives_way(tiny_lm_repo) -> None:  # type: ignore[no-untyped-def]
    engine = one_slot_engine(tiny_lm_repo, host_rows=1)
    try:
        third = [1, *rng.integers(3, 300, size=30).tolist()]
        generate(engine, SYSTEM + [7])
        generate(engine, OTHER + [9])  # SYSTEM parked
        generate(engine, third)  # OTHER parked in the one host row: SYSTEM is gone
        assert generate(engine, SYSTEM + [5])[1].cached_tokens <= 1  # at most the shared BOS
    finally:
        engine.stop()


def test_host_rows_refresh_and_evict_by_use() -> None:
    store = HostStore(2)
    a, b = Entry(np.array([1, 2, 3]), "t", 0), Entry(np.array([1, 5, 6]), "t", 0)
    store.put(store.slot_for(a), a)
    store.put(store.slot_for(b), b)
    assert store.slot_for(Entry(np.array([1, 2, 3]), "t", 0)) == 0  # the same tokens: refreshed in place
    assert store.slot_for(Entry(np.array([1, 2, 3, 8]), "t", 0)) == 0  # a longer turn replaces its prefix
    assert store.slot_for(Entry(np.array([1, 2, 4, 8]), "t", 0)) == 0  # the same start, another ending
    assert store.lookup([1, 2, 3, 4], "t") == (0, 3) and store.lookup([1, 2, 3, 4], "u") == (-1, 0)
    store.restored(0)  # a was used last: b gives way
    assert store.slot_for(Entry(np.array([1, 2, 3, 8]), "u", 0)) == 1  # not onto another tenant's prefix
    assert store.slot_for(Entry(np.array([9, 9]), "t", 0)) == 1
    assert store.slot_for(Entry(np.array([1, 7, 7, 7]), "t", 0)) == 1  # only BOS in common with a: not its copy
    assert store.lookup([1, 2], "t") == (0, 1)  # never the prompt's last token
