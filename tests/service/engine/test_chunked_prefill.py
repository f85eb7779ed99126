"""Chunked prefill: a long prompt is prefilled a few tokens per engine step, interleaved with the
decode steps of the sequences already running, and must give exactly the unchunked result."""

from __future__ import annotations

import numpy as np

from service.backends.ort_standard import CAPACITY_STEP
from tests.service.engine.test_engine import PROMPT, make_engine, recompute_greedy, request

LONG_PROMPT = [1, *np.random.default_rng(7).integers(3, 300, size=CAPACITY_STEP + 12).tolist()]  # crosses a step


def chunked_engine(repo, chunk: int, max_batch: int = 4):  # type: ignore[no-untyped-def]
    manifest, runner, engine = make_engine(repo, max_batch=max_batch, max_seq_len=160, prefill_tokens=chunk)
    calls: list[tuple[str, int, int]] = []  # ("extend", row, tokens) / ("decode", rows, 1)
    extend, decode = runner.extend, runner.decode

    def spy_extend(row, ids):  # type: ignore[no-untyped-def]
        calls.append(("extend", row, len(ids)))
        return extend(row, ids)

    def spy_decode(last):  # type: ignore[no-untyped-def]
        calls.append(("decode", len(last), 1))
        return decode(last)

    runner.extend, runner.decode = spy_extend, spy_decode
    return manifest, runner, engine, calls


def test_runner_chunks_give_the_unchunked_logits(tiny_lm_repo) -> None:
    _, runner, _ = make_engine(tiny_lm_repo, max_batch=2, max_seq_len=160)
    whole = runner.prefill(0, LONG_PROMPT).copy()
    runner.release_row(0)
    for start in range(0, len(LONG_PROMPT), 5):
        last = runner.extend(1, LONG_PROMPT[start : start + 5])
    assert runner.lengths[1] == len(LONG_PROMPT)
    np.testing.assert_allclose(last, whole, rtol=1e-4, atol=1e-4)
    assert int(np.argmax(last)) == int(np.argmax(whole))


def test_long_prompt_is_chunked_between_decode_steps_with_identical_greedy_tokens(tiny_lm_repo) -> None:
    manifest, _, engine, calls = chunked_engine(tiny_lm_repo, chunk=4)
    engine.start()
    try:
        busy, busy_c = request(PROMPT, 80, ignore_eos=True)
        engine.submit(busy)
        busy_c.events.get(timeout=10)  # decoding: the long prompt now has to share the steps
        long_req, long_c = request(LONG_PROMPT, 12, ignore_eos=True)
        engine.submit(long_req)
        tokens, fin = long_c.wait()
        busy_tokens, _ = busy_c.wait()
    finally:
        engine.stop()
    assert fin.completion_tokens == 12
    assert tokens == recompute_greedy(manifest, LONG_PROMPT, 12)
    assert busy_tokens == recompute_greedy(manifest, PROMPT, 80)[1:]

    chunks = [i for i, c in enumerate(calls) if c[0] == "extend" and c[1] == 1]
    assert [calls[i][2] for i in chunks] == [4] * (len(LONG_PROMPT) // 4) + [len(LONG_PROMPT) % 4] * (
        len(LONG_PROMPT) % 4 > 0
    )
    for a, b in zip(chunks, chunks[1:], strict=False):  # the other sequence decodes between chunks
        assert calls[a + 1 : b] == [("decode", 1, 1)]


def test_a_neighbour_finishing_mid_prefill_moves_the_prefilling_row(tiny_lm_repo) -> None:
    manifest, runner, engine, calls = chunked_engine(tiny_lm_repo, chunk=2)
    engine.step_delay_s = 0.01  # the short one must still be decoding when the long one arrives
    engine.start()
    try:
        short, short_c = request(PROMPT, 6, ignore_eos=True)
        engine.submit(short)
        short_c.events.get(timeout=10)
        long_req, long_c = request(LONG_PROMPT, 10, ignore_eos=True)
        engine.submit(long_req)
        tokens, _ = long_c.wait()
        short_tokens, short_fin = short_c.wait()
    finally:
        engine.stop()
    assert short_fin.completion_tokens == 6
    assert short_tokens == recompute_greedy(manifest, PROMPT, 6)[1:]
    assert tokens == recompute_greedy(manifest, LONG_PROMPT, 10)
    rows = [c[1] for c in calls if c[0] == "extend"]
    assert 1 in rows and 0 in rows  # began in row 1, continued in row 0 once the short one left
    assert engine.slots_in_use == 0 and not runner.lengths.any()


def test_cancelling_a_prefilling_request_frees_its_slot(tiny_lm_repo) -> None:
    _, runner, engine, calls = chunked_engine(tiny_lm_repo, chunk=1)
    engine.step_delay_s = 0.01  # keep the prefill going long enough to cancel it midway
    engine.start()
    try:
        busy, busy_c = request(PROMPT, 100, ignore_eos=True)
        engine.submit(busy)
        busy_c.events.get(timeout=10)
        long_req, long_c = request(LONG_PROMPT, 10, ignore_eos=True)
        engine.submit(long_req)
        while not any(c[0] == "extend" and c[1] == 1 for c in calls):
            busy_c.events.get(timeout=10)
        long_req.cancel()
        tokens, fin = long_c.wait()
        assert fin.reason == "cancelled" and tokens == [] and fin.completion_tokens == 0
        assert engine.slots_in_use == 1 and runner.lengths[1] == 0
        busy.cancel()
        busy_c.wait()
    finally:
        engine.stop()
