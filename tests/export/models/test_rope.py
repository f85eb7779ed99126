"""Kiln's RoPE frequencies are transformers' (ROPE_INIT_FUNCTIONS) for every supported type."""

from __future__ import annotations

import math

import pytest
import torch

from export.checkpoint import hf_config_to_kiln
from export.models.config import CheckpointError
from export.models.rope import attention_factor, inv_freq, parse_rope, rope_tables

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

SIZES = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1, vocab_size=64)
CASES = {
    "llama3": (
        "LlamaConfig",
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            "rope_theta": 500000.0,
        },
    ),
    "linear": ("LlamaConfig", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "dynamic": ("LlamaConfig", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
    "yarn": (
        "LlamaConfig",
        {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}},
    ),
    "yarn_mscale": (
        "LlamaConfig",
        {
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 8.0,
                "original_max_position_embeddings": 64,
                "mscale": 0.7,
                "mscale_all_dim": 1.0,
                "beta_fast": 16,
            }
        },
    ),
    "longrope": (
        "Phi3Config",
        {
            "rope_scaling": {
                "type": "longrope",
                "short_factor": [1.0 + i / 8 for i in range(16)],
                "long_factor": [3.0] * 16,
            },
            "original_max_position_embeddings": 128,
            "max_position_embeddings": 4096,
        },
    ),
    "partial": ("Phi3Config", {"partial_rotary_factor": 0.5, "rope_theta": 250000.0}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_frequencies_and_attention_factor_match_transformers(case: str) -> None:
    cls, extra = CASES[case]
    hf_cfg = getattr(transformers, cls)(**SIZES, **{"max_position_embeddings": 512, **extra})
    kind = hf_cfg.rope_parameters["rope_type"]
    if kind == "default":
        rotary = transformers.models.phi3.modeling_phi3.Phi3RotaryEmbedding
        want, want_factor = rotary.compute_default_rope_parameters(hf_cfg)
    else:
        want, want_factor = ROPE_INIT_FUNCTIONS[kind](hf_cfg)
    cfg = hf_config_to_kiln(hf_cfg.to_dict())
    assert torch.equal(inv_freq(cfg), want.float()), case
    assert attention_factor(cfg) == pytest.approx(want_factor, rel=1e-12)


def test_the_legacy_spelling_reads_like_rope_parameters() -> None:
    """Hub configs written before transformers 5: `rope_scaling` plus a top-level `rope_theta`."""
    legacy = {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "rope_theta": 1234.0}
    modern = {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1234.0}}
    assert parse_rope(legacy, 256) == parse_rope(modern, 256)
    assert parse_rope(legacy, 256)["rope_theta"] == 1234.0


def test_longrope_serves_the_short_context_exactly_and_says_so() -> None:
    fields = parse_rope(
        {
            "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4},
            "original_max_position_embeddings": 4096,
        },
        131072,
    )
    assert fields["max_position_embeddings"] == 4096
    assert "original_max_position_embeddings=4096" in fields["notes"][0]
    # transformers' attention factor comes from the *configured* context, not the capped one.
    assert fields["rope_scaling"]["attention_factor"] == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))


def test_tables_are_the_in_graph_cos_sin() -> None:
    cfg = hf_config_to_kiln(transformers.LlamaConfig(**SIZES, max_position_embeddings=64, **CASES["yarn"][1]).to_dict())
    cos, sin = rope_tables(cfg)
    freqs = torch.arange(64).float()[:, None] * inv_freq(cfg)
    assert cos.shape == (64, 16)
    assert torch.equal(torch.from_numpy(cos), freqs.cos() * attention_factor(cfg))
    assert torch.equal(torch.from_numpy(sin), freqs.sin() * attention_factor(cfg))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"rope_type": "proportional", "factor": 2.0}, "rope_scaling.rope_type 'proportional' is not supported"),
        ({"rope_type": "default", "mrope_section": [2, 2, 4]}, r"rope_scaling.mrope_section=\[2, 2, 4\]"),
        ({"rope_type": "llama3", "factor": 8.0}, "rope_type 'llama3' needs rope_scaling.low_freq_factor"),
        ({"rope_type": "linear"}, "rope_type 'linear' needs rope_scaling.factor"),
    ],
)
def test_unsupported_rope_is_refused_by_key(params: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_rope({"rope_scaling": params}, 256)


def test_rope_per_layer_type_is_refused() -> None:
    nested = {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}}
    with pytest.raises(CheckpointError, match="per layer type"):
        parse_rope({"rope_parameters": nested}, 256)
