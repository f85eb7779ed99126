"""Llama (1, 2, 3.x): biases (`attention_bias`, `mlp_bias`), explicit `head_dim`, RoPE scaling."""

from __future__ import annotations

from export.models.config import DecoderConfig
from export.models.families import Family, StateDict
from export.models.families.common import activation, base_fields, hf_names

DEFAULTS = {"tie_word_embeddings": False, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048}


def from_hf_config(raw: dict) -> DecoderConfig:
    bias = bool(raw.get("attention_bias"))  # Llama's attention_bias covers o_proj too
    return DecoderConfig(
        **base_fields(raw, "llama", DEFAULTS),
        attention_bias=bias,
        o_proj_bias=bias,
        mlp_bias=bool(raw.get("mlp_bias")),
        hidden_act=activation(raw.get("hidden_act", "silu")),
    )


def map_weights(state: StateDict, cfg: DecoderConfig) -> StateDict:
    return hf_names(state)


FAMILY = Family("llama", ("llama",), ("LlamaForCausalLM",), from_hf_config, map_weights)
