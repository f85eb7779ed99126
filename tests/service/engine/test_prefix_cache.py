"""The slot choice of prefix caching, on its own (the engine's use of it: test_prefix_reuse.py)."""

from __future__ import annotations

import numpy as np

from service.engine.prefix_cache import PrefixCache, common_prefix


def test_common_prefix() -> None:
    a = np.array([1, 2, 3, 4])
    assert common_prefix(a, np.array([1, 2, 9])) == 2
    assert common_prefix(a, a) == 4 and common_prefix(a, np.array([], np.int64)) == 0


def test_the_longest_prefix_wins_and_never_the_last_prompt_token() -> None:
    cache = PrefixCache(4)
    cache.retain(1, [1, 2, 3, 4, 5], "")
    cache.retain(2, [1, 2, 3], "")
    choice = cache.choose(range(1, 4), [1, 2, 3, 4, 5, 6, 7], "")
    assert (choice.row, choice.reuse) == (1, 5)
    assert cache.rows[1] is None  # taken: the new sequence owns it
    full = cache.choose(range(1, 4), [1, 2, 3], "")  # a full match still recomputes the last token
    assert (full.row, full.reuse) == (2, 2)


def test_without_a_hit_an_empty_row_then_the_least_recently_used() -> None:
    cache = PrefixCache(3)
    cache.retain(0, [5, 6], "")
    cache.retain(1, [7, 8], "")
    assert cache.choose(range(0, 3), [9, 9, 9], "").row == 2  # empty first
    cache.retain(2, [1], "")
    assert cache.choose(range(0, 3), [9, 9], "").row == 0  # then the oldest entry


def test_a_short_hit_takes_an_empty_row_and_keeps_the_long_entry() -> None:
    cache = PrefixCache(3)
    cache.retain(0, [1, *range(10, 40)], "")  # a long cached system prompt
    choice = cache.choose(range(0, 3), [1, 2, 3], "")  # shares only BOS
    assert choice.reuse == 0 and choice.row != 0 and cache.rows[0] is not None
    cache.retain(1, [5], "")
    cache.retain(2, [6], "")
    again = cache.choose(range(0, 3), [1, 2, 3], "")  # no empty row: the hit it has
    assert (again.row, again.reuse) == (0, 1)
    assert again.evicted is not None and len(again.evicted.tokens) == 31  # what the host tier may park


def test_a_prefix_serves_only_its_tenant_unless_shared() -> None:
    private = PrefixCache(2)
    private.retain(0, [1, 2, 3, 4], "key-a")
    assert private.choose(range(0, 2), [1, 2, 3, 4, 5], "key-b").reuse == 0
    shared = PrefixCache(2, shared=True)
    shared.retain(0, [1, 2, 3, 4], "key-a")
    assert shared.choose(range(0, 2), [1, 2, 3, 4, 5], "key-b").reuse == 4


def test_a_recurrent_state_takes_only_whole_entries() -> None:
    cache = PrefixCache(2, partial=False)
    cache.retain(0, [1, 2, 3], "")
    assert cache.choose(range(0, 2), [1, 2, 9, 9], "").reuse == 0  # only 2 of 3 match: useless
    cache.retain(0, [1, 2, 3], "")
    assert cache.choose(range(0, 2), [1, 2, 3, 9], "").reuse == 3


def test_swaps_follow_the_rows() -> None:
    cache = PrefixCache(3)
    cache.retain(0, [1, 2], "")
    cache.swap(0, 2)
    assert cache.rows[0] is None and cache.rows[2] is not None
    assert cache.choose(range(0, 3), [1, 2, 3], "").row == 2


def test_a_short_hit_destroys_the_stalest_of_equal_hits() -> None:
    cache = PrefixCache(3)
    for row, first in enumerate((10, 20, 30)):  # three cached prompts sharing only BOS, row 0 oldest
        cache.retain(row, [1, first, first + 1], "")
    choice = cache.choose(range(0, 3), [1, 2, 3], "")
    assert (choice.row, choice.reuse) == (0, 1)  # not the most recent entry: it may be asked for next
    assert cache.rows[1] is not None and cache.rows[2] is not None
