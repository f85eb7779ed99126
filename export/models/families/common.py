"""What every family's `config.json` and weights have in common.

A key missing from `config.json` means the family's transformers default, which differs
between families (Gemma ties its embeddings by default, Mistral has a 4096 window), so each
family passes its own defaults. Special-token ids come last (`special_tokens`), because they
may also live in `generation_config.json` or only in the tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from tokenizers import Tokenizer

from export.models.config import FULL, SLIDING, CheckpointError
from export.models.rope import parse_rope
from export.tokenizer import special_ids

# transformers activation names -> DecoderConfig.hidden_act
ACTIVATION_NAMES = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
}


def value(raw: Mapping[str, Any], key: str, defaults: Mapping[str, Any]) -> Any:
    """raw[key] when config.json has it (null included), else the family default."""
    return raw[key] if key in raw else defaults.get(key)


def refuse_truthy(raw: Mapping[str, Any], keys: tuple[str, ...], why: str) -> None:
    for key in keys:
        if raw.get(key):
            raise CheckpointError(f"{key}={raw[key]!r} is not supported: {why}")


def activation(name: str | None, key: str = "hidden_act") -> str:
    if name not in ACTIVATION_NAMES:
        raise CheckpointError(f"{key} {name!r} is not supported (supported: {sorted(ACTIVATION_NAMES)})")
    return ACTIVATION_NAMES[name]


def base_fields(
    raw: Mapping[str, Any], family: str, defaults: Mapping[str, Any], rope_aliases: dict[str, str] | None = None
) -> dict[str, Any]:
    """DecoderConfig fields shared by all families: sizes, norms, RoPE, tying."""
    if raw.get("quantization_config"):
        method = raw["quantization_config"].get("quant_method", "?")
        raise CheckpointError(
            f"quantization_config (quant_method {method!r}) is not supported: export from the unquantized weights"
        )
    unknown = sorted(set(raw.get("layer_types") or []) - {FULL, SLIDING})
    if unknown:
        raise CheckpointError(f"layer_types {unknown[0]!r} is not supported (only {FULL!r} and {SLIDING!r})")
    heads = int(raw["num_attention_heads"])
    hidden = int(raw["hidden_size"])
    max_pos = int(value(raw, "max_position_embeddings", defaults) or 2048)
    return {
        "family": family,
        "vocab_size": int(raw["vocab_size"]),
        "hidden_size": hidden,
        "num_layers": int(raw["num_hidden_layers"]),
        "num_heads": heads,
        "num_kv_heads": int(raw.get("num_key_value_heads") or heads),
        "head_dim": int(value(raw, "head_dim", defaults) or hidden // heads),
        "intermediate_size": int(raw["intermediate_size"]),
        "rms_norm_eps": float(value(raw, "rms_norm_eps", defaults) or 1e-6),
        "tie_word_embeddings": bool(value(raw, "tie_word_embeddings", defaults)),
        **parse_rope(dict(raw), max_pos, rope_aliases),
    }


def windows(raw: Mapping[str, Any], sliding_window: int | None, derive: Any = None) -> dict[str, Any]:
    """sliding_window + layer_types fields: `layer_types` from config.json when saved there,
    else from `derive(num_layers)` (a family's rule), else every layer windowed."""
    if not sliding_window:
        return {}
    layers = int(raw["num_hidden_layers"])
    types = raw.get("layer_types") or (derive(layers) if derive else [SLIDING] * layers)
    if SLIDING not in types:
        return {}
    return {"sliding_window": int(sliding_window), "layer_types": list(types)}


def hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face names -> Kiln's: drop the `model.` prefix and rotary buffers."""
    out = {}
    for key, tensor in state.items():
        if "rotary_emb" in key:
            continue
        out[key[len("model.") :] if key.startswith("model.") else key] = tensor
    return out


def rename(state: dict[str, torch.Tensor], renames: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Apply `(pattern, replacement)` regex renames to every key, in order, once each."""
    out = {}
    for key, tensor in state.items():
        for pattern, repl in renames:
            new = re.sub(pattern, repl, key)
            if new != key:
                key = new
                break
        out[key] = tensor
    return out


def special_tokens(
    raw: Mapping[str, Any], generation: Mapping[str, Any], tokenizer: Tokenizer | None
) -> dict[str, Any]:
    """bos/eos/pad ids. `eos_token_id` may be a list (Llama 3, Qwen): every id is kept, config.json's
    first, then generation_config.json's (which transformers' generate() stops on)."""
    specials = special_ids(tokenizer) if tokenizer is not None else {}

    def ids(key: str) -> list[int]:
        found: list[int] = []
        for source in (raw, generation):
            v = source.get(key)
            for tid in v if isinstance(v, list) else [v]:
                if tid is not None and int(tid) not in found:
                    found.append(int(tid))
        return found

    def one(key: str, fallback: int) -> int:
        got = ids(key)
        if got:
            return got[0]
        special = specials.get(key)
        return int(special) if special is not None else fallback

    eos = ids("eos_token_id") or [one("eos_token_id", 2)]
    return {
        "bos_token_id": one("bos_token_id", 1),
        "eos_token_id": eos[0],
        "eos_token_ids": eos,
        "pad_token_id": one("pad_token_id", eos[0]),
    }
