"""The generation engine without HTTP: KV-cache correctness, batching invariance, control flow."""

from __future__ import annotations

import queue
import time

import numpy as np
import onnxruntime as ort
import pytest

from contracts.manifest import TextManifest, past_name
from service.backends.onnxruntime_lm import make_runner
from service.backends.ort_fused import FusedRunner
from service.backends.ort_standard import StandardRunner
from service.engine.engine import GenerationEngine
from service.engine.request import FinishEvent, GenerationRequest, TokenEvent
from service.engine.sampling import SamplingParams
from service.errors import QueueFull, Unavailable

GREEDY = SamplingParams(temperature=0.0)


# Which exported graph the engine tests drive; tests/service/engine/conftest.py runs every test
# once per graph contract ("fused": GroupQueryAttention, "fp32": the traced standard graph);
# test_quantized_variants.py runs some of them on the quantized fused graphs ("int8", "int4").
GRAPH = {"variant": "fused"}


def make_engine(repo, max_batch=4, max_seq_len=128, max_queue=8, step_delay_s=0.0, **engine_kw):  # type: ignore[no-untyped-def]
    """(manifest, runner, engine) on the tiny LM's graph under test; `engine_kw` go to the engine."""
    manifest = TextManifest.read(next(repo.glob("*/kiln.json")).parent)
    runner = make_runner(manifest, GRAPH["variant"], max_batch=max_batch, max_seq_len=max_seq_len, threads=1)
    expected = StandardRunner if GRAPH["variant"] in ("fp32", "optimized") else FusedRunner  # int8/int4: fused
    assert type(runner) is expected, (GRAPH, type(runner))
    engine = GenerationEngine(
        runner,
        decode=lambda ids: "".join(f"<{i}>" for i in ids),
        eos_token_ids=manifest.eos_token_ids,
        vocab_size=manifest.vocab_size,
        max_queue=max_queue,
        step_delay_s=step_delay_s,
        **engine_kw,
    )
    return manifest, runner, engine


class Collector:
    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()

    def __call__(self, ev) -> None:  # type: ignore[no-untyped-def]
        self.events.put(ev)

    def wait(self, timeout: float = 30.0) -> tuple[list[int], FinishEvent]:
        tokens: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            ev = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(ev, FinishEvent):
                return tokens, ev
            assert isinstance(ev, TokenEvent)
            tokens.append(ev.token_id)


def request(prompt, n, sampling=GREEDY, **kw):  # type: ignore[no-untyped-def]
    c = Collector()
    req = GenerationRequest(prompt_ids=list(prompt), max_new_tokens=n, sampling=sampling, stop=[], emit=c, **kw)
    return req, c


def recompute_greedy(manifest, prompt, n):  # type: ignore[no-untyped-def]
    """Reference without a cache: run the whole traced (standard) graph over the sequence every step."""
    sess = ort.InferenceSession(str(manifest.graph("fp32").path), providers=["CPUExecutionProvider"])
    ids = list(prompt)
    empty = {
        past_name(t): np.zeros((1, *layer.slot_shape(t, 0)), np.float32)
        for layer in manifest.state
        for t in layer.tensors
    }
    for _ in range(n):
        feeds = {
            "input_ids": np.array([ids], np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None],
            "attention_mask": np.ones((1, len(ids)), np.int64),
            **empty,
        }
        logits = sess.run(["logits"], feeds)[0]
        ids.append(int(np.argmax(logits[0, -1])))
    return ids[len(prompt) :]


PROMPT = [1, 40, 41, 42, 43, 44, 45]


def test_cached_greedy_equals_full_recompute_and_pytorch(tiny_lm_repo) -> None:
    import torch

    from export.checkpoint import load_checkpoint

    manifest, runner, engine = make_engine(tiny_lm_repo)
    engine.start()
    try:
        req, c = request(PROMPT, 24, ignore_eos=True)
        engine.submit(req)
        tokens, fin = c.wait()
    finally:
        engine.stop()
    assert fin.reason == "length" and fin.completion_tokens == 24
    # The decoder joins ids as "<id>", so every generated id surfaces as text.
    assert tokens == recompute_greedy(manifest, PROMPT, 24)

    ckpt = load_checkpoint(tiny_lm_repo.parent / "checkpoints" / manifest.name)
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        for _ in range(24):
            nxt = ckpt.model.logits_full(ids)[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    assert tokens == ids[0, len(PROMPT) :].tolist()


def test_greedy_is_the_same_alone_and_inside_a_busy_batch(tiny_lm_repo) -> None:
    _, _, engine = make_engine(tiny_lm_repo, max_batch=4)
    engine.start()
    try:
        alone, c = request(PROMPT, 20, ignore_eos=True)
        engine.submit(alone)
        solo_tokens, _ = c.wait()
        # A busy batch: sampled neighbours of different lengths, joining at different times.
        rng = np.random.default_rng(1)
        others = []
        for k in range(3):
            prompt = [1, *rng.integers(3, 300, size=3 + 5 * k).tolist()]
            r, oc = request(prompt, 10 + 7 * k, SamplingParams(temperature=1.0, top_p=0.9, seed=k), ignore_eos=True)
            engine.submit(r)
            others.append(oc)
        time.sleep(0.01)
        again, c2 = request(PROMPT, 20, ignore_eos=True)
        engine.submit(again)
        batched_tokens, _ = c2.wait()
        for oc in others:
            oc.wait()
    finally:
        engine.stop()
    assert batched_tokens == solo_tokens


def test_same_seed_same_sample_in_any_batch(tiny_lm_repo) -> None:
    _, _, engine = make_engine(tiny_lm_repo)
    engine.start()
    sampling = SamplingParams(temperature=1.2, top_k=50, seed=1234)
    try:
        r1, c1 = request(PROMPT, 16, sampling, ignore_eos=True)
        engine.submit(r1)
        first, _ = c1.wait()
        r2, c2 = request(PROMPT, 16, sampling, ignore_eos=True)
        r3, c3 = request(PROMPT, 16, SamplingParams(temperature=1.2, top_k=50, seed=99), ignore_eos=True)
        engine.submit(r3)
        engine.submit(r2)
        second, _ = c2.wait()
        other, _ = c3.wait()
    finally:
        engine.stop()
    assert first == second
    assert other != first


def test_cancel_frees_the_slot_within_a_step(tiny_lm_repo) -> None:
    # 20 ms per step: the 100 tokens cannot all be done before the cancel lands (a tiny model
    # would otherwise finish between the first token and the cancel on a fast, idle machine).
    _, runner, engine = make_engine(tiny_lm_repo, max_batch=2, step_delay_s=0.02)
    engine.start()
    try:
        r, c = request(PROMPT, 100, ignore_eos=True)
        engine.submit(r)
        c.events.get(timeout=10)  # first token: it holds a slot
        assert engine.slots_in_use == 1
        r.cancel()
        _, fin = c.wait()
        assert fin.reason == "cancelled"
        assert engine.slots_in_use == 0
        assert runner.lengths[0] == 0
    finally:
        engine.stop()


def test_deadline_ends_with_timeout(tiny_lm_repo) -> None:
    # The tiny model is fast enough to finish 110 tokens inside any short deadline: slow each step.
    _, _, engine = make_engine(tiny_lm_repo, step_delay_s=0.005)
    engine.start()
    try:
        r, c = request(PROMPT, 110, ignore_eos=True, deadline=time.monotonic() + 0.05)
        engine.submit(r)
        tokens, fin = c.wait()
    finally:
        engine.stop()
    assert fin.reason == "timeout"
    assert len(tokens) < 110


def test_full_queue_is_refused_at_once_and_draining_refuses_everything(tiny_lm_repo) -> None:
    _, _, engine = make_engine(tiny_lm_repo, max_batch=1, max_queue=1)
    # Engine not started: nothing is admitted, so the queue fills deterministically.
    engine.submit(request(PROMPT, 4)[0])  # takes the free slot's place
    engine.submit(request(PROMPT, 4)[0])  # the one queue place
    with pytest.raises(QueueFull) as err:
        engine.submit(request(PROMPT, 4)[0])
    assert err.value.headers["Retry-After"] == "1"
    engine.begin_drain()
    with pytest.raises(Unavailable):
        engine.submit(request(PROMPT, 4)[0])


def test_kv_cache_memory_follows_the_formula_and_is_never_reallocated(tiny_lm_repo) -> None:
    manifest, runner, engine = make_engine(tiny_lm_repo, max_batch=3, max_seq_len=96)
    arch = manifest.architecture  # 2 (K and V) x layers x slots x kv_heads x positions x head_dim x 4 bytes
    expected = 2 * arch["num_layers"] * 3 * arch["num_kv_heads"] * 96 * arch["head_dim"] * 4
    assert runner.cache_bytes == expected
    buffers = [runner.state.views[name].ctypes.data for name in runner.state.names]
    engine.start()
    try:
        collectors = []
        for k in range(5):
            r, c = request(PROMPT[: 2 + k], 30, ignore_eos=True)
            engine.submit(r)
            collectors.append(c)
        for c in collectors:
            c.wait()
    finally:
        engine.stop()
    assert [runner.state.views[name].ctypes.data for name in runner.state.names] == buffers
    assert runner.cache_bytes == expected


def test_sequences_join_while_others_decode(tiny_lm_repo) -> None:
    """Continuous batching: a late short request finishes while an early long one still runs."""
    _, _, engine = make_engine(tiny_lm_repo, max_batch=4)
    engine.start()
    try:
        long_req, long_c = request(PROMPT, 110, ignore_eos=True)
        engine.submit(long_req)
        long_c.events.get(timeout=10)
        short_req, short_c = request(PROMPT, 3, ignore_eos=True)
        engine.submit(short_req)
        _, fin = short_c.wait()
        assert fin.completion_tokens == 3
        assert engine.slots_in_use == 1  # the long one is still decoding
        _, long_fin = long_c.wait()
        assert long_fin.completion_tokens == 110
    finally:
        engine.stop()
