"""Kiln's Mamba mixers load Hugging Face checkpoints and agree with transformers at every step."""

from __future__ import annotations

import pytest
import torch

from export.checkpoint import load_checkpoint
from tests.ssm_models import tiny_hybrid


def _hf(path):  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.mark.parametrize("version", [1, 2])
def test_logits_and_states_match_transformers_at_every_step(version, hf_mamba_dir, hf_mamba2_dir) -> None:  # type: ignore[no-untyped-def]
    path = hf_mamba_dir if version == 1 else hf_mamba2_dir
    hf, ours = _hf(path), load_checkpoint(path).model
    assert ours.config.layer_kinds == ["mamba" if version == 1 else "mamba2"] * 2
    ids = torch.randint(3, 300, (2, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = hf(ids).logits
        assert (ours.logits_full(ids) - full).abs().max().item() < 1e-4
        out = hf(ids[:, :6], use_cache=True)
        ones = torch.ones(2, 6, dtype=torch.int64)
        logits, state = ours(ids[:, :6], torch.arange(6).expand(2, 6), ones, ours.empty_state(2))
        cache = out.cache
        for t in range(6, 15):
            assert (logits - out.logits).abs().max().item() < 1e-4
            for i, (conv, ssm) in enumerate(state):
                # transformers keeps k conv inputs; the oldest never reaches an output.
                assert (conv - cache.get_conv_state(i)[..., 1:]).abs().max().item() < 1e-4
                assert (ssm - cache.get_recurrent_state(i)).abs().max().item() < 1e-4
            if t == 14:
                break
            out = hf(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            logits, state = ours(ids[:, t : t + 1], torch.full((2, 1), t), torch.ones(2, 1, dtype=torch.int64), state)
    assert max(ssm.abs().max().item() for _, ssm in state) > 0.05  # the state is doing something


def test_padded_positions_leave_the_state_unchanged_bit_for_bit() -> None:
    model = tiny_hybrid("mamba,mamba2")
    ids = torch.randint(3, 300, (3, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    with torch.no_grad():
        _, before = model(ids, torch.arange(5).expand(3, 5), torch.ones(3, 5, dtype=torch.int64), model.empty_state(3))
        _, after = model(ids, torch.arange(5, 10).expand(3, 5), mask, before)
        _, alone = model(
            ids[1:2, :2],
            torch.arange(5, 7)[None],
            torch.ones(1, 2, dtype=torch.int64),
            [(c[1:2], s[1:2]) for c, s in before],
        )
    for (c0, s0), (c1, s1), (ca, sa) in zip(before, after, alone, strict=True):
        assert torch.equal(c1[2], c0[2]) and torch.equal(s1[2], s0[2])  # idle row
        assert not torch.equal(s1[0], s0[0])  # a full row moved on
        assert torch.allclose(c1[1], ca[0], atol=1e-6) and torch.allclose(s1[1], sa[0], atol=1e-6)


def test_state_size_does_not_depend_on_sequence_length() -> None:
    model = tiny_hybrid("mamba,mamba2")
    spec = model.state_spec()
    shapes = []
    for n in (3, 40):
        ids = torch.randint(3, 300, (1, n), generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            _, state = model(ids, torch.arange(n)[None], torch.ones(1, n, dtype=torch.int64), model.empty_state(1))
        shapes.append([tuple(t.shape) for pair in state for t in pair])
    assert shapes[0] == shapes[1]
    assert shapes[0] == [(1, *shape) for entry in spec for shape in entry["tensors"].values()]
