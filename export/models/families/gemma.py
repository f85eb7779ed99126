"""Gemma and Gemma 2.

Gemma: embeddings x sqrt(hidden_size), RMSNorm scaling by (1 + w), GeGLU with tanh GELU
(its legacy `hidden_act: "gelu"` means the tanh approximation, as transformers reads it),
head_dim 256, tied head. Gemma 2 adds query_pre_attn_scalar, attention and final-logit
softcaps, sliding windows on alternate layers (even ones) and an RMSNorm on each sub-block's
output; all of them map onto GroupQueryAttention's `scale`, `softcap`, `local_window_size`.
"""

from __future__ import annotations

from export.models.config import FULL, SLIDING, DecoderConfig
from export.models.families import Family, StateDict
from export.models.families.common import (
    activation,
    base_fields,
    hf_names,
    refuse_truthy,
    rename,
    value,
    windows,
)

GEMMA_DEFAULTS = {"tie_word_embeddings": True, "rms_norm_eps": 1e-6, "max_position_embeddings": 8192, "head_dim": 256}
GEMMA2_DEFAULTS = {
    **GEMMA_DEFAULTS,
    "sliding_window": 4096,
    "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "hidden_activation": "gelu_pytorch_tanh",
}
# Gemma 2's names -> Kiln's: its post_attention_layernorm normalises the attention *output*;
# its pre_feedforward_layernorm is what Llama (and Kiln) call post_attention_layernorm.
GEMMA2_RENAMES = [
    (r"\.post_attention_layernorm\.", ".attn_output_norm."),
    (r"\.pre_feedforward_layernorm\.", ".post_attention_layernorm."),
    (r"\.post_feedforward_layernorm\.", ".mlp_output_norm."),
]


def _common(raw: dict, family: str, defaults: dict) -> dict:
    refuse_truthy(raw, ("use_bidirectional_attention",), "Kiln serves causal decoders")
    bias = bool(raw.get("attention_bias"))
    return {
        **base_fields(raw, family, defaults),
        "attention_bias": bias,
        "o_proj_bias": bias,
        "norm_unit_offset": True,
        "embed_scale": float(raw["hidden_size"]) ** 0.5,
    }


def gemma_config(raw: dict) -> DecoderConfig:
    act = raw.get("hidden_act", "gelu_pytorch_tanh")
    return DecoderConfig(
        **_common(raw, "gemma", GEMMA_DEFAULTS),
        hidden_act=activation("gelu_pytorch_tanh" if act == "gelu" else act),
    )


def gemma2_config(raw: dict) -> DecoderConfig:
    d = GEMMA2_DEFAULTS
    return DecoderConfig(
        **_common(raw, "gemma2", d),
        hidden_act=activation(value(raw, "hidden_activation", d), "hidden_activation"),
        attn_scale=float(value(raw, "query_pre_attn_scalar", d)) ** -0.5,
        attn_softcap=float(value(raw, "attn_logit_softcapping", d) or 0.0),
        final_softcap=float(value(raw, "final_logit_softcapping", d) or 0.0),
        sandwich_norm=True,
        **windows(raw, value(raw, "sliding_window", d), lambda n: [SLIDING if (i + 1) % 2 else FULL for i in range(n)]),
    )


def gemma_weights(state: StateDict, cfg: DecoderConfig) -> StateDict:
    return hf_names(state)


def gemma2_weights(state: StateDict, cfg: DecoderConfig) -> StateDict:
    return rename(hf_names(state), GEMMA2_RENAMES)


GEMMA = Family("gemma", ("gemma",), ("GemmaForCausalLM",), gemma_config, gemma_weights)
GEMMA2 = Family("gemma2", ("gemma2",), ("Gemma2ForCausalLM",), gemma2_config, gemma2_weights)
