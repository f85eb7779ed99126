"""Per-slot state as an abstraction: SlotState on its own, and a second kind of state — a fixed-size
recurrent state per slot, as a Mamba layer keeps — driven by the real engine without any change to
the engine loop.

`RecurrentToyRunner` is a TEST DOUBLE of a recurrent model (no ONNX graph of that kind exists yet):
a deterministic numpy "model" whose next token depends only on the sequence so far through a small
state vector. It follows the ModelRunner protocol over a real SlotState of kind `recurrent`.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence

import numpy as np
import pytest

from contracts.manifest import ATTENTION_KV, POSITIONS, RECURRENT, LayerState
from service.backends.slot_state import SlotState
from service.engine.engine import GenerationEngine
from service.engine.request import FinishEvent, GenerationRequest, TokenEvent
from service.engine.sampling import SamplingParams

VOCAB = 97
EOS = 0


class RecurrentToyRunner:
    """h ← (h · A + onehot-ish(token)) mod 1, logits peak at a token derived from h."""

    prefix_reuse = "whole"  # a recurrent state: all of a finished row, or nothing
    can_verify = False

    def __init__(self, max_batch: int, max_positions: int = 1_000_000) -> None:
        self.max_batch = max_batch
        self.max_seq_len = max_positions
        self.state = SlotState((LayerState(RECURRENT, {"h.0": (3,)}),), max_batch, max_positions)
        self.calls: list[tuple[str, int]] = []

    @staticmethod
    def _advance(h: np.ndarray, token: int) -> np.ndarray:
        return np.mod(h * np.array([1.618, 2.414, 3.303], np.float32) + np.float32(token) / VOCAB, 1.0)

    @staticmethod
    def _logits(h: np.ndarray) -> np.ndarray:
        peak = int(h.sum() * 1000) % (VOCAB - 1) + 1  # never EOS
        logits = np.zeros(VOCAB, np.float32)
        logits[peak] = 5.0
        return logits

    def extend(self, row: int, token_ids: Sequence[int]) -> np.ndarray:
        self.calls.append(("extend", len(token_ids)))
        h = self.state.views["h.0"][row]
        for t in token_ids:
            h[...] = self._advance(h, int(t))
        self.state.lengths[row] += len(token_ids)
        return self._logits(h)

    def decode(self, last_tokens: np.ndarray) -> np.ndarray:
        self.calls.append(("decode", len(last_tokens)))
        out = np.empty((len(last_tokens), VOCAB), np.float32)
        for row, t in enumerate(last_tokens):
            h = self.state.views["h.0"][row]
            h[...] = self._advance(h, int(t))
            out[row] = self._logits(h)
        self.state.lengths[: len(last_tokens)] += 1
        return out

    def move_row(self, src: int, dst: int) -> None:
        self.state.move_row(src, dst)

    def release_row(self, row: int) -> None:
        self.state.release_row(row)

    def can_grow(self, row: int) -> bool:
        return self.state.can_grow(row)

    def length(self, row: int) -> int:
        return int(self.state.lengths[row])

    def swap_rows(self, a: int, b: int) -> None:
        self.state.swap_rows(a, b)

    def truncate(self, row: int, positions: int) -> None:
        self.state.truncate(row, positions)


def reference(prompt: list[int], n: int) -> list[int]:
    """The same model run alone, token by token, no slots."""
    h = np.zeros(3, np.float32)
    for t in prompt:
        h = RecurrentToyRunner._advance(h, t)
    out = []
    for _ in range(n):
        token = int(np.argmax(RecurrentToyRunner._logits(h)))
        out.append(token)
        h = RecurrentToyRunner._advance(h, token)
    return out


def run(engine: GenerationEngine, prompt: list[int], n: int, sampling: SamplingParams | None = None) -> queue.Queue:
    events: queue.Queue = queue.Queue()
    req = GenerationRequest(prompt, n, sampling or SamplingParams(), [], events.put, ignore_eos=True)
    engine.submit(req)
    return events


def tokens_of(events: queue.Queue, timeout: float = 10.0) -> tuple[list[int], FinishEvent]:
    out: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        ev = events.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(ev, FinishEvent):
            return out, ev
        assert isinstance(ev, TokenEvent)
        out.append(ev.token_id)


@pytest.fixture
def toy():  # type: ignore[no-untyped-def]
    runner = RecurrentToyRunner(max_batch=3)
    engine = GenerationEngine(runner, decode=lambda ids: "", eos_token_ids=[EOS], vocab_size=VOCAB, max_queue=8)
    engine.start()
    yield runner, engine
    engine.stop()


def test_a_recurrent_state_serves_continuous_batches_exactly(toy) -> None:  # type: ignore[no-untyped-def]
    runner, engine = toy
    rng = np.random.default_rng(0)
    prompts = [[1, *rng.integers(1, VOCAB, size=3 + 4 * k).tolist()] for k in range(5)]
    lengths = [30, 7, 19, 12, 25]
    # More requests than slots, different lengths: rows finish, compact (move_row) and are reused.
    pending = [run(engine, p, n) for p, n in zip(prompts, lengths, strict=True)]
    sampled = run(engine, prompts[0], 40, SamplingParams(temperature=1.0, seed=3))
    for events, prompt, n in zip(pending, prompts, lengths, strict=True):
        got, fin = tokens_of(events)
        assert fin.reason == "length" and got == reference(prompt, n)
    tokens_of(sampled)
    assert max(n for op, n in runner.calls if op == "decode") == 3  # it really batched
    assert not runner.state.lengths.any() and not runner.state.views["h.0"].any()  # every row released


def test_a_recurrent_state_outlives_any_kv_window_and_its_memory_is_fixed(toy) -> None:  # type: ignore[no-untyped-def]
    runner, engine = toy
    before = runner.state.nbytes
    got, fin = tokens_of(run(engine, [1, 2, 3], 3000))
    assert fin.completion_tokens == 3000 and got == reference([1, 2, 3], 3000)
    assert runner.state.nbytes == before == 3 * 3 * 4  # slots x state size x fp32, whatever the length
    assert SlotState(runner.state.layers, 3, 10).nbytes == SlotState(runner.state.layers, 3, 10**6).nbytes


def test_cancel_frees_a_recurrent_slot(toy) -> None:  # type: ignore[no-untyped-def]
    _, engine = toy
    events: queue.Queue = queue.Queue()
    req = GenerationRequest([1, 5], 100_000, SamplingParams(), [], events.put, ignore_eos=True)
    engine.submit(req)
    assert isinstance(events.get(timeout=10), TokenEvent)
    req.cancel()
    _, fin = tokens_of(events)
    assert fin.reason == "cancelled" and engine.slots_in_use == 0


def test_slot_state_moves_and_releases_rows_of_both_kinds() -> None:
    layers = (
        LayerState(ATTENTION_KV, {"key.0": (2, POSITIONS, 4)}),
        LayerState(RECURRENT, {"ssm.1": (5,)}),
    )
    state = SlotState(layers, max_batch=3, max_positions=16)
    kv, ssm = state.views["key.0"], state.views["ssm.1"]
    assert kv.shape == (3, 2, 16, 4) and ssm.shape == (3, 5)
    assert state.nbytes == 4 * 3 * (2 * 16 * 4 + 5)
    kv[2, :, :6] = 7.0
    kv[2, :, 6:] = -1.0  # beyond the row's length: not part of its state
    ssm[2] = 3.0
    state.lengths[2] = 6
    state.move_row(2, 0)
    assert (kv[0, :, :6] == 7.0).all() and (kv[0, :, 6:] == 0.0).all() and (ssm[0] == 3.0).all()
    assert state.lengths[0] == 6
    state.release_row(2)
    assert state.lengths[2] == 0 and (ssm[2] == 0.0).all()  # a recurrent state restarts from zeros
    assert state.can_grow(0, 10) and not state.can_grow(0, 11)


def test_slot_state_relayout_keeps_every_live_position() -> None:
    state = SlotState((LayerState(ATTENTION_KV, {"key.0": (2, POSITIONS, 3)}),), max_batch=3, max_positions=64)
    state.set_capacity(8)
    rng = np.random.default_rng(1)
    rows = {r: rng.standard_normal((2, 5 + r, 3)).astype(np.float32) for r in range(3)}
    for r, data in rows.items():
        state.views["key.0"][r, :, : data.shape[1]] = data
        state.lengths[r] = data.shape[1]
    for cap in (32, 16, 64, 8):  # grow and shrink in place
        state.set_capacity(cap)
        assert state.views["key.0"].shape == (3, 2, cap, 3)
        for r, data in rows.items():
            np.testing.assert_array_equal(state.views["key.0"][r, :, : data.shape[1]], data)


def test_prefix_caching_over_a_recurrent_state_takes_whole_entries_only() -> None:
    runner = RecurrentToyRunner(max_batch=3)
    engine = GenerationEngine(
        runner, decode=lambda ids: "", eos_token_ids=[EOS], vocab_size=VOCAB, max_queue=8, prefix_cache=True
    )
    engine.start()
    try:
        first = [1, 7, 8, 9]
        out, _ = tokens_of(run(engine, first, 5))
        held = [*first, *out[:-1]]  # what the finished row's state has absorbed
        partial = [*first[:3], 40, 41]  # shares 3 tokens but not the whole entry: no reuse
        got, fin = tokens_of(run(engine, partial, 6))
        assert got == reference(partial, 6) and fin.cached_tokens == 0
        continuing = [*held, 50, 51]  # starts with everything the entry holds: reused whole
        got, fin = tokens_of(run(engine, continuing, 6))
        assert got == reference(continuing, 6) and fin.cached_tokens == len(held)
    finally:
        engine.stop()
    with pytest.raises(ValueError, match="cannot be rolled back"):
        runner.state.lengths[0] = 5
        runner.truncate(0, 3)
