"""The hybrid graphs driven the way the engine will drive them generate what PyTorch generates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contracts.manifest import TextManifest
from export.checkpoint import load_checkpoint
from tests.export.hybrid_driver import HybridDriver, Request

PROMPTS = [(7, 6), (12, 4), (3, 8), (9, 5), (5, 3), (14, 2)]  # (prompt length, new tokens)


def _greedy(model, prompt: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:  # type: ignore[no-untyped-def]
    """PyTorch's full forward over the whole sequence for every token (no state, no cache)."""
    ids = torch.tensor([prompt])
    tokens, logits = [], []
    with torch.no_grad():
        for _ in range(n):
            logits.append(model.logits_full(ids)[0, -1].numpy())
            tokens.append(int(logits[-1].argmax()))
            ids = torch.cat([ids, torch.tensor([[tokens[-1]]])], dim=1)
    return tokens, logits


@pytest.fixture(params=["hybrid", "mamba"])
def served(request, hybrid_checkpoint, hybrid_entry, hf_mamba_dir, hf_mamba_entry):  # type: ignore[no-untyped-def]
    if request.param == "hybrid":
        return load_checkpoint(hybrid_checkpoint).model, hybrid_entry
    return load_checkpoint(hf_mamba_dir).model, hf_mamba_entry


def test_continuous_batching_with_compaction_equals_pytorch_greedy(served) -> None:  # type: ignore[no-untyped-def]
    model, entry = served
    rng = np.random.default_rng(0)
    requests = [Request(rng.integers(3, 300, n).tolist(), new) for n, new in PROMPTS]
    driver = HybridDriver(entry, max_batch=3, capacity=64, chunk=4)
    done = driver.run(requests, idle_every=5)
    assert len(done) == len(requests)
    for req in requests:
        tokens, logits = _greedy(model, req.prompt, req.max_new)
        assert req.generated == tokens, req.prompt
        # Logits too: greedy tokens alone would hide a slightly wrong state.
        assert max(float(np.abs(a - b).max()) for a, b in zip(req.logits, logits, strict=True)) < 1e-4
    # The scenario exercised what it is meant to: chunked prefill beside decoding rows,
    # S = 1 calls through the decode graph, idle rows, and holes filled by the last row.
    s = driver.stats
    assert s.mixed_calls > 0 and s.calls["decode"] > 0 and s.calls["prefill"] > 0
    assert s.idle_rows > 0 and s.moves > 0


def test_state_memory_per_slot_does_not_depend_on_sequence_length(served) -> None:  # type: ignore[no-untyped-def]
    _, entry = served
    state_bytes = TextManifest.read(entry).architecture["state_bytes"]
    per_slot = {}
    for capacity in (16, 256):
        driver = HybridDriver(entry, max_batch=2, capacity=capacity, chunk=4)
        recurrent = sum(b[0].nbytes for n, b in driver.buffers.items() if driver.kinds[n] == "recurrent")
        kv = sum(b[0].nbytes for n, b in driver.buffers.items() if driver.kinds[n] == "attention_kv")
        per_slot[capacity] = (recurrent, kv)
    assert per_slot[16][0] == per_slot[256][0] == state_bytes["recurrent_per_slot"] > 0
    per_position = state_bytes["attention_kv_per_position"]
    assert per_slot[16][1] == 16 * per_position and per_slot[256][1] == 256 * per_position
    # And a long sequence leaves the recurrent state exactly the size it started at.
    driver = HybridDriver(entry, max_batch=1, capacity=64, chunk=16)
    before = {n: b.shape for n, b in driver.buffers.items()}
    driver.run([Request(list(range(3, 50)), 4)])
    assert {n: b.shape for n, b in driver.buffers.items()} == before
