"""The engine serving Mamba / hybrid entries generates what PyTorch (and transformers) generate."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest
import torch

from contracts.manifest import TextManifest
from export.checkpoint import load_checkpoint
from service.backends.onnxruntime_lm import make_runner
from service.backends.ort_hybrid import HybridRunner
from service.backends.ort_runner import state_bytes
from service.engine.engine import GenerationEngine
from service.engine.request import FinishEvent, GenerationRequest, TokenEvent
from service.engine.sampling import SamplingParams
from service.engine.speculative import SpecConfig

PROMPTS = [(7, 6), (12, 4), (3, 8), (9, 5), (5, 3), (14, 2)]  # (prompt length, new tokens)


TOP = 5  # alternatives compared per token: greedy tokens alone would hide a slightly wrong state
# (a tiny random Mamba tends to repeat one token whatever its state holds)


class Generation:
    """One greedy request: its tokens, each token's top-`TOP` log-probabilities, how it ended."""

    def __init__(self, prompt: list[int], n: int) -> None:
        self.events: queue.Queue = queue.Queue()
        self.prompt = prompt
        self.req = GenerationRequest(
            prompt_ids=list(prompt),
            max_new_tokens=n,
            sampling=SamplingParams(temperature=0.0),
            stop=[],
            emit=self.events.put,
            logprobs=TOP,
        )
        self.tokens: list[int] = []
        self.top: list[list[tuple[int, float]]] = []

    def wait(self, timeout: float = 60.0) -> FinishEvent:
        while True:
            ev = self.events.get(timeout=timeout)
            if isinstance(ev, FinishEvent):
                return ev
            assert isinstance(ev, TokenEvent) and ev.top_logprobs is not None
            self.tokens.append(ev.token_id)
            self.top.append(ev.top_logprobs)


def reference_greedy(logits_of, prompt: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:  # type: ignore[no-untyped-def]
    """Greedy tokens and log-probabilities from a full forward over the whole sequence every
    token (no state carried at all); `logits_of(ids)` is the last position's logits."""
    ids = torch.tensor([prompt])
    tokens: list[int] = []
    logprobs: list[np.ndarray] = []
    with torch.no_grad():
        for _ in range(n):
            logits = logits_of(ids)
            logprobs.append(torch.log_softmax(logits.double(), -1).numpy())
            tokens.append(int(logits.argmax()))
            ids = torch.cat([ids, torch.tensor([[tokens[-1]]])], dim=1)
    return tokens, logprobs


def assert_matches(gen: Generation, logits_of, tol: float = 1e-4) -> None:  # type: ignore[no-untyped-def]
    tokens, logprobs = reference_greedy(logits_of, gen.prompt, len(gen.tokens))
    assert gen.tokens == tokens, gen.prompt
    for top, expected in zip(gen.top, logprobs, strict=True):
        for token, logprob in top:
            assert abs(logprob - expected[token]) < tol, (gen.prompt, token, logprob, expected[token])


def submit(engine: GenerationEngine, prompt: list[int], n: int) -> Generation:
    gen = Generation(prompt, n)
    engine.submit(gen.req)
    return gen


def kiln_logits(model):  # type: ignore[no-untyped-def]
    return lambda ids: model.logits_full(ids)[0, -1]


@pytest.fixture(scope="module", params=["hybrid", "mamba"])
def served(request, hybrid_checkpoint, hybrid_entry, hf_mamba_dir, hf_mamba_entry):  # type: ignore[no-untyped-def]
    """(PyTorch model, manifest): Kiln's hybrid (Mamba, attention, Mamba-2, Mamba) and HF Mamba."""
    if request.param == "hybrid":
        return load_checkpoint(hybrid_checkpoint).model, TextManifest.read(hybrid_entry)
    return load_checkpoint(hf_mamba_dir).model, TextManifest.read(hf_mamba_entry)


def engine_for(manifest: TextManifest, max_batch: int = 3, **kwargs) -> GenerationEngine:  # type: ignore[no-untyped-def]
    runner = make_runner(manifest, "fused", max_batch=max_batch, max_seq_len=96, threads=1)
    assert type(runner) is HybridRunner
    return GenerationEngine(
        runner,
        decode=lambda ids: "".join(f"<{i}>" for i in ids),
        eos_token_ids=(10**6,),  # never: every request runs its full length
        vocab_size=manifest.vocab_size,
        max_queue=16,
        **kwargs,
    )


def test_continuous_batching_with_chunked_prefill_equals_pytorch_greedy(served) -> None:  # type: ignore[no-untyped-def]
    model, manifest = served
    rng = np.random.default_rng(0)
    prompts = [(rng.integers(3, 300, n).tolist(), new) for n, new in PROMPTS]
    # 3 rows for 6 requests: rows are compacted as sequences finish; 4-token prefill chunks
    # make the long prompts resume from the state a previous chunk left, beside decoding rows.
    engine = engine_for(manifest, prefill_tokens=4, prefix_cache=False)
    engine.start()
    try:
        pending = [submit(engine, prompt, n) for prompt, n in prompts]
        for gen in pending:
            assert gen.wait().reason == "length"
            assert_matches(gen, kiln_logits(model))
    finally:
        engine.stop()


def test_a_next_turn_reuses_the_whole_recurrent_state(served) -> None:  # type: ignore[no-untyped-def]
    model, manifest = served
    engine = engine_for(manifest, max_batch=2, prefix_cache=True)
    assert engine.cache is not None and not engine.cache.partial  # whole entries only
    assert engine.runner.can_verify is False
    engine.start()
    try:
        first = submit(engine, list(range(20, 40)), 6)
        first.wait()
        # The next turn starts with everything the first one fed (prompt + all but the last token).
        follow = submit(engine, first.prompt + first.tokens + [50, 51, 52], 5)
        assert follow.wait().cached_tokens == len(first.prompt) + len(first.tokens) - 1
        assert_matches(follow, kiln_logits(model))
        # A prompt that diverges inside the held sequence cannot use a rolled-back state.
        other = submit(engine, first.prompt[:10] + [60] * 12, 4)
        assert other.wait().cached_tokens == 0
        assert_matches(other, kiln_logits(model))
    finally:
        engine.stop()


def test_speculation_is_off_for_a_state_that_cannot_roll_back(served) -> None:  # type: ignore[no-untyped-def]
    _, manifest = served
    engine = engine_for(manifest, speculative=SpecConfig(tokens=4, ngram_max=3, ngram_min=1))
    assert engine.spec is None


def test_state_memory_follows_the_manifest(served) -> None:  # type: ignore[no-untyped-def]
    _, manifest = served
    per_slot = manifest.architecture["state_bytes"]
    for positions in (32, 96):
        runner = make_runner(manifest, "fp32", max_batch=2, max_seq_len=positions, threads=1)
        assert runner.cache_bytes == state_bytes(manifest.state, 2, positions)
        expected = per_slot["recurrent_per_slot"] + positions * per_slot["attention_kv_per_position"]
        assert runner.cache_bytes == 2 * expected


def test_hf_mamba_served_greedy_equals_transformers(hf_mamba_dir, hf_mamba_entry) -> None:  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    hf = transformers.MambaForCausalLM.from_pretrained(hf_mamba_dir).eval()
    engine = engine_for(TextManifest.read(hf_mamba_entry), prefill_tokens=5)
    engine.start()
    try:
        gen = submit(engine, list(range(30, 47)), 8)
        gen.wait()
    finally:
        engine.stop()
    assert_matches(gen, lambda ids: hf(ids).logits[0, -1])  # transformers' own forward


def test_cancelled_and_timed_out_rows_leave_no_state_behind(served) -> None:  # type: ignore[no-untyped-def]
    """A cancel and a deadline land mid-generation (slowed steps); the slot's recurrent state is
    cleared for its next user, whose output stays exact."""
    model, manifest = served
    engine = engine_for(manifest, max_batch=1, step_delay_s=0.01, prefix_cache=True)
    engine.start()
    try:
        cancelled = submit(engine, list(range(40, 60)), 60)
        assert cancelled.events.get(timeout=60) is not None  # the first token: it is decoding
        cancelled.req.cancel()
        assert cancelled.wait().reason == "cancelled"
        late = Generation(list(range(70, 90)), 60)
        late.req.deadline = time.monotonic() + 0.2
        engine.submit(late.req)
        assert late.wait().reason == "timeout" and 0 < len(late.tokens) < 60
        after = submit(engine, list(range(90, 110)), 6)
        assert after.wait().reason == "length"
        assert_matches(after, kiln_logits(model))
    finally:
        engine.stop()
