"""The standard-graph runner attends only to a bucketed prefix of each KV row: re-laying the rows
out as that capacity grows and shrinks must never change a result. The fused-graph runner's
kernel reads each row only up to its length, so it binds the whole buffer and never re-lays out."""

from __future__ import annotations

import numpy as np

from service.backends.ort_fused import FusedRunner
from service.backends.ort_standard import CAPACITY_STEP
from service.engine.sampling import SamplingParams
from tests.service.engine.test_engine import PROMPT, make_engine, recompute_greedy, request


def test_greedy_across_capacity_steps_equals_full_recompute(tiny_lm_repo) -> None:
    n = 3 * CAPACITY_STEP + 5  # grows the capacity three times
    manifest, runner, engine = make_engine(tiny_lm_repo, max_batch=2, max_seq_len=160)
    engine.start()
    try:
        req, c = request(PROMPT, n, ignore_eos=True)
        engine.submit(req)
        tokens, fin = c.wait()
    finally:
        engine.stop()
    assert fin.completion_tokens == n
    assert tokens == recompute_greedy(manifest, PROMPT, n)
    if isinstance(runner, FusedRunner):
        assert runner.state.cap == runner.max_seq_len  # bound whole, from start-up on
    else:
        assert runner.cap == CAPACITY_STEP  # back to the smallest capacity once idle


def test_rows_moving_and_capacity_shrinking_inside_a_batch(tiny_lm_repo) -> None:
    _, runner, engine = make_engine(tiny_lm_repo, max_batch=4, max_seq_len=160)
    caps: list[tuple[int, int]] = []  # (new capacity, live rows) at every re-layout
    set_capacity = runner.state.set_capacity

    def record(cap: int) -> None:
        caps.append((cap, int((runner.lengths > 0).sum())))
        set_capacity(cap)

    runner.state.set_capacity = record
    engine.start()
    try:
        solo, c = request(PROMPT, 90, ignore_eos=True)
        engine.submit(solo)
        solo_tokens, _ = c.wait()
        # Long neighbours that finish early (rows compact, capacity shrinks) around the greedy one.
        rng = np.random.default_rng(3)
        others = []
        for k in range(3):
            prompt = [1, *rng.integers(3, 300, size=40 + 10 * k).tolist()]
            r, oc = request(prompt, 30 + 5 * k, SamplingParams(temperature=1.0, seed=k), ignore_eos=True)
            engine.submit(r)
            others.append(oc)
        again, c2 = request(PROMPT, 90, ignore_eos=True)
        engine.submit(again)
        batched_tokens, _ = c2.wait()
        for oc in others:
            oc.wait()
    finally:
        engine.stop()
    assert batched_tokens == solo_tokens
    assert not runner.lengths.any()
    if isinstance(runner, FusedRunner):
        assert all(cap == runner.max_seq_len for cap, _ in caps), caps  # never re-laid out
        return
    shrinks_while_live = [(a, b) for (a, _), (b, live) in zip(caps, caps[1:], strict=False) if b < a and live > 0]
    assert shrinks_while_live, caps
