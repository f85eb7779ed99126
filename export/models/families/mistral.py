"""Mistral: Llama's layout with a sliding window on every layer (`sliding_window`; null = none)."""

from __future__ import annotations

from export.models.config import DecoderConfig
from export.models.families import Family, StateDict
from export.models.families.common import activation, base_fields, hf_names, value, windows

# transformers' MistralConfig defaults: a config.json without `sliding_window` means 4096.
DEFAULTS = {
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 131072,
    "sliding_window": 4096,
}


def from_hf_config(raw: dict) -> DecoderConfig:
    return DecoderConfig(
        **base_fields(raw, "mistral", DEFAULTS),
        hidden_act=activation(raw.get("hidden_act", "silu")),
        **windows({**raw, "layer_types": None}, value(raw, "sliding_window", DEFAULTS)),  # every layer
    )


def map_weights(state: StateDict, cfg: DecoderConfig) -> StateDict:
    return hf_names(state)


FAMILY = Family("mistral", ("mistral",), ("MistralForCausalLM",), from_hf_config, map_weights)
