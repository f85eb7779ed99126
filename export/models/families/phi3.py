"""Phi-3 / Phi-3.5 / Phi-4-mini: packed `qkv_proj` and `gate_up_proj`, `partial_rotary_factor`,
LongRoPE (older configs call it "su" or "yarn"), an optional window on every layer."""

from __future__ import annotations

from export.models.config import DecoderConfig
from export.models.families import Family, StateDict
from export.models.families.common import activation, base_fields, hf_names, value, windows

DEFAULTS = {"tie_word_embeddings": False, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "sliding_window": None}
ROPE_ALIASES = {"su": "longrope", "yarn": "longrope"}  # as transformers' Phi3Config reads them


def from_hf_config(raw: dict) -> DecoderConfig:
    return DecoderConfig(
        **base_fields(raw, "phi3", DEFAULTS, ROPE_ALIASES),
        hidden_act=activation(raw.get("hidden_act", "silu")),
        **windows({**raw, "layer_types": None}, value(raw, "sliding_window", DEFAULTS)),
    )


def map_weights(state: StateDict, cfg: DecoderConfig) -> StateDict:
    """Unpack qkv_proj into q/k/v_proj and gate_up_proj into gate_proj (first half) and up_proj."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    out: StateDict = {}
    for key, tensor in hf_names(state).items():
        if key.endswith("self_attn.qkv_proj.weight"):
            prefix = key.removesuffix("qkv_proj.weight")
            for name, part in zip(("q", "k", "v"), tensor.split([q, kv, kv]), strict=True):
                out[f"{prefix}{name}_proj.weight"] = part
        elif key.endswith("mlp.gate_up_proj.weight"):
            prefix = key.removesuffix("gate_up_proj.weight")
            out[f"{prefix}gate_proj.weight"], out[f"{prefix}up_proj.weight"] = tensor.chunk(2)
        else:
            out[key] = tensor
    return out


FAMILY = Family("phi3", ("phi3",), ("Phi3ForCausalLM",), from_hf_config, map_weights)
