"""State-space checkpoints on disk: Kiln's "kiln-hybrid" and Hugging Face `MambaForCausalLM`.

A Hugging Face Mamba directory (config.json with model_type "mamba" or "mamba2", safetensors
weights, `tokenizer.json`) loads into `HybridLM` with every layer "mamba" (or "mamba2"), RMSNorm
and no positions:
the parameter names are the same (`backbone.layers.N.mixer.*`, `backbone.embeddings`,
`backbone.norm_f`, `lm_head`), so the weights load as stored. Whatever the graph cannot
represent is refused, naming the config key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from export.models.config import CheckpointError
from export.models.families.common import special_tokens
from export.models.hybrid import HybridConfig, HybridLM

# model_type → why Kiln refuses it (checked before anything is loaded).
REFUSED = {
    "falcon_mamba": "FalconMamba is not supported: its mixer RMS-normalises B, C and Δ (mixer_rms_eps)",
}
SUPPORTED = ("mamba", "mamba2")
HYBRID_TYPES = ("kiln-hybrid", *SUPPORTED, *REFUSED)  # model_types export/checkpoint.py sends here


class HybridCheckpointError(CheckpointError):
    """The Mamba/hybrid checkpoint cannot be represented; the message names the config key."""


def load_hybrid(
    path: Path,
    raw: dict,
    tokenizer: Tokenizer,
    load_weights: Callable[[Path], dict[str, torch.Tensor]],
    generation: dict,
) -> HybridLM:
    """The model of a "kiln-hybrid", "mamba" or "mamba2" directory; CheckpointError naming the key."""
    try:
        if raw["model_type"] == "kiln-hybrid":
            return build_hybrid(HybridConfig.from_dict(raw), load_file(str(path / "model.safetensors")), path)
        check_supported(raw, path)
        return build_hybrid(hf_mamba_config(raw, special_tokens(raw, generation, tokenizer)), load_weights(path), path)
    except HybridCheckpointError:
        raise
    except ValueError as exc:  # HybridConfig's own checks
        raise HybridCheckpointError(f"{path}: {exc}") from None


def hf_mamba_config(raw: dict, special: dict | None = None) -> HybridConfig:
    """Hugging Face MambaConfig / Mamba2Config (config.json) → HybridConfig, refusing what Kiln cannot run.

    `special`: bos/eos/pad ids as `export.models.families.common.special_tokens` resolves them.
    """
    if raw.get("hidden_act", "silu") != "silu":
        raise HybridCheckpointError(f"hidden_act={raw['hidden_act']!r}: only 'silu' is supported for Mamba")
    hidden = int(raw["hidden_size"])
    mamba2 = raw.get("model_type") == "mamba2"
    rank = raw.get("time_step_rank", "auto")
    rank = math.ceil(hidden / 16) if rank == "auto" else int(rank)
    tokens = special or special_tokens(raw, {}, None)
    extra: dict = {}
    if mamba2:
        limit = [_number(x) for x in raw.get("time_step_limit", (0.0, math.inf))]
        if limit != [0.0, math.inf]:
            raise HybridCheckpointError(
                f"time_step_limit={limit}: Δ clamping is not supported (transformers' own decode step ignores it)"
            )
        heads, head_dim = int(raw.get("num_heads", 128)), int(raw.get("head_dim", 64))
        if heads * head_dim != int(raw.get("expand", 2)) * hidden:
            raise HybridCheckpointError(f"num_heads*head_dim ({heads}*{head_dim}) != expand*hidden_size")
        extra = {"mamba2_heads": heads, "mamba2_groups": int(raw.get("n_groups", 8))}
    return HybridConfig(
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        layers=",".join(["mamba2" if mamba2 else "mamba"] * int(raw["num_hidden_layers"])),
        norm="rmsnorm",
        positions="none",
        norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
        state_size=int(raw.get("state_size", 16)),
        conv_kernel=int(raw.get("conv_kernel", 4)),
        expand=int(raw.get("expand", 2)),
        time_step_rank=rank,
        use_bias=bool(raw.get("use_bias", False)),
        use_conv_bias=bool(raw.get("use_conv_bias", True)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", not mamba2)),
        bos_token_id=int(tokens["bos_token_id"]),
        eos_token_id=int(tokens["eos_token_id"]),
        eos_token_ids=[int(t) for t in tokens["eos_token_ids"]],
        pad_token_id=int(tokens["pad_token_id"]),
        **extra,
    )


def check_supported(raw: dict, path: Path) -> None:
    model_type = raw.get("model_type")
    if model_type in REFUSED:
        raise HybridCheckpointError(f"{path}: model_type {model_type!r}: {REFUSED[model_type]}")
    expand = raw.get("expand", 2)
    hidden = raw.get("hidden_size")
    if "intermediate_size" in raw and hidden is not None and int(raw["intermediate_size"]) != int(expand) * int(hidden):
        raise HybridCheckpointError(f"{path}: intermediate_size {raw['intermediate_size']} != expand * hidden_size")


def build_hybrid(cfg: HybridConfig, state: dict[str, torch.Tensor], path: Path) -> HybridLM:
    """HybridLM with the given weights; a missing or unexpected tensor is an error, not a default."""
    state = {_hf_name(k): v.float() for k, v in state.items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    model = HybridLM(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise HybridCheckpointError(
            f"{path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.eval()


def _number(value: float | str | dict) -> float:
    # transformers writes non-finite floats as {"__float__": "Infinity"} (JSON has no inf).
    return float(value["__float__"]) if isinstance(value, dict) else float(value)


def _hf_name(key: str) -> str:
    # Older Mamba checkpoints call the embedding `backbone.embedding` (transformers renames it on load).
    return key.replace("backbone.embedding.", "backbone.embeddings.")
