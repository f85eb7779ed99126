"""The hybrid LM: layer patterns, norms and positions; chunked and step-wise runs equal the full forward."""

from __future__ import annotations

import pytest
import torch

from export.models.hybrid import HybridConfig
from tests.ssm_models import tiny_hybrid

CASES = [
    ("mamba,mamba,attention,mamba", "rmsnorm", "rotary"),
    ("attention,mamba2", "layernorm", "learned"),
    ("mamba,attention", "rmsnorm", "none"),
]


def _run(model, ids, start, state):  # type: ignore[no-untyped-def]
    n = ids.shape[1]
    kinds = model.config.layer_kinds
    past = next((k.shape[2] for kind, (k, _) in zip(kinds, state, strict=True) if kind == "attention"), 0)
    mask = torch.ones(ids.shape[0], past + n, dtype=torch.int64)
    logits, present = model(ids, torch.arange(start, start + n).expand(ids.shape[0], n), mask, state)
    merged = []
    for kind, old, new in zip(model.config.layer_kinds, state, present, strict=True):
        merged.append((torch.cat([old[0], new[0]], 2), torch.cat([old[1], new[1]], 2)) if kind == "attention" else new)
    return logits, merged


@pytest.mark.parametrize(("layers", "norm", "positions"), CASES)
def test_chunked_and_stepwise_runs_equal_the_full_forward(layers, norm, positions) -> None:  # type: ignore[no-untyped-def]
    model = tiny_hybrid(layers, norm=norm, positions=positions)
    ids = torch.randint(3, 300, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model.logits_full(ids)
        chunk1, state = _run(model, ids[:, :4], 0, model.empty_state(2))
        chunk2, state = _run(model, ids[:, 4:9], 4, state)
        steps = []
        for t in (9, 10):
            step, state = _run(model, ids[:, t : t + 1], t, state)
            steps.append(step)
    got = torch.cat([chunk1, chunk2, *steps], dim=1)
    assert (got - full).abs().max().item() < 1e-4
    kinds = [type(layer.mixer).__name__ for layer in model.backbone.layers if hasattr(layer, "mixer")]
    assert kinds and all(k in ("MambaMixer", "Mamba2Mixer") for k in kinds)
    norm_type = type(model.backbone.norm_f).__name__
    assert norm_type == ("LayerNorm" if norm == "layernorm" else "RMSNorm")
    assert hasattr(model.backbone, "embed_positions") == (positions == "learned")


def test_positions_matter_only_where_the_config_says() -> None:
    ids = torch.randint(3, 300, (1, 6), generator=torch.Generator().manual_seed(3))
    for positions, should_change in (("rotary", True), ("learned", True), ("none", False)):
        model = tiny_hybrid("attention,mamba", positions=positions)
        mask = torch.ones(1, 6, dtype=torch.int64)
        with torch.no_grad():
            a, _ = model(ids, torch.arange(6)[None], mask, model.empty_state(1))
            b, _ = model(ids, torch.arange(6)[None] + 7, mask, model.empty_state(1))
        assert (not torch.allclose(a, b)) == should_change, positions


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("norm", "batchnorm", "norm='batchnorm'"),
        ("positions", "alibi", "positions='alibi'"),
        ("layers", "mamba,conv", "layers='mamba,conv'"),
        ("layers", "", "layers=''"),
    ],
)
def test_unsupported_config_values_are_refused_by_name(key, value, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        HybridConfig(**{key: value})


def test_mamba2_heads_must_divide_the_inner_width() -> None:
    with pytest.raises(ValueError, match="mamba2_heads"):
        HybridConfig(hidden_size=32, layers="mamba2", mamba2_heads=5)
