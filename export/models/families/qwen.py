"""Qwen2 / Qwen2.5 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm, explicit head_dim).

Both window only when `use_sliding_window` is set, and then only layers from
`max_window_layers` on (or as `layer_types` says, when config.json carries it).
"""

from __future__ import annotations

from export.models.config import FULL, SLIDING, DecoderConfig
from export.models.families import Family, StateDict
from export.models.families.common import activation, base_fields, hf_names, value, windows

DEFAULTS = {
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "use_sliding_window": False,
    "sliding_window": 4096,
    "max_window_layers": 28,
}


def _windows(raw: dict) -> dict:
    window = value(raw, "sliding_window", DEFAULTS) if value(raw, "use_sliding_window", DEFAULTS) else None
    first = int(value(raw, "max_window_layers", DEFAULTS))
    return windows(raw, window, lambda n: [SLIDING if i >= first else FULL for i in range(n)])


def qwen2_config(raw: dict) -> DecoderConfig:
    return DecoderConfig(
        **base_fields(raw, "qwen2", DEFAULTS),
        attention_bias=True,  # q/k/v always carry a bias in Qwen2; o_proj never
        hidden_act=activation(raw.get("hidden_act", "silu")),
        **_windows(raw),
    )


def qwen3_config(raw: dict) -> DecoderConfig:
    bias = bool(raw.get("attention_bias"))
    return DecoderConfig(
        **base_fields(raw, "qwen3", {**DEFAULTS, "head_dim": 128}),
        attention_bias=bias,
        o_proj_bias=bias,
        qk_norm=True,
        hidden_act=activation(raw.get("hidden_act", "silu")),
        **_windows(raw),
    )


def map_weights(state: StateDict, cfg: DecoderConfig) -> StateDict:
    return hf_names(state)


QWEN2 = Family("qwen2", ("qwen2",), ("Qwen2ForCausalLM",), qwen2_config, map_weights)
QWEN3 = Family("qwen3", ("qwen3",), ("Qwen3ForCausalLM",), qwen3_config, map_weights)
