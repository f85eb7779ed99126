"""Rotary position embedding: the frequencies and attention factor of each RoPE type.

Each type follows transformers' `modeling_rope_utils.ROPE_INIT_FUNCTIONS` step by step, in
float32 torch as it does, so Kiln's rotary angles are transformers' to the last bit or so.
Every supported type is *static* over the positions Kiln serves: the frequencies are one
vector, computed once, from which the standard graph computes cos/sin in-graph and the fused
graph takes precomputed tables.

Two types change frequencies with the sequence length in transformers, and are handled so that
the served range stays exact rather than approximated:

- `dynamic` (NTK) rescales only once a sequence passes `max_position_embeddings`; below that it
  is the default RoPE, and Kiln never serves past `max_position_embeddings`.
- `longrope` switches *every* position to `long_factor` once the longest row of the batch
  passes `original_max_position_embeddings`, while keys cached before the switch keep
  `short_factor`. A serving engine batching unrelated rows cannot reproduce that, so the export
  serves the short-factor model exactly and caps the context at
  `original_max_position_embeddings` (recorded in the config's `notes`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from export.models.config import CheckpointError, DecoderConfig

COMMON_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
TYPE_KEYS: dict[str, set[str]] = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "truncate",
    },
    "longrope": {"short_factor", "long_factor", "factor", "original_max_position_embeddings", "attention_factor"},
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
    "longrope": ("short_factor", "long_factor"),
}


def parse_rope(raw: dict, max_position_embeddings: int, aliases: dict[str, str] | None = None) -> dict:
    """`DecoderConfig` fields for the RoPE of a Hugging Face `config.json`.

    Reads both spellings: transformers 5's `rope_parameters` (theta inside) and the older
    `rope_scaling` + top-level `rope_theta`. `aliases` renames legacy type names (Phi-3 saved
    LongRoPE as "su" or "yarn"). Unknown types and keys are refused by name.
    """
    # transformers lets a legacy `rope_scaling` override `rope_parameters` when both are present.
    key = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
    params = dict(raw.get(key) or {})
    if any(isinstance(v, dict) for v in params.values()):
        raise CheckpointError(f"{key} per layer type ({sorted(params)}) is not supported: one RoPE for all layers")
    rope_type = params.get("rope_type", params.get("type", "default"))
    rope_type = (aliases or {}).get(str(rope_type), str(rope_type))
    if rope_type not in TYPE_KEYS:
        raise CheckpointError(f"{key}.rope_type {rope_type!r} is not supported (supported: {sorted(TYPE_KEYS)})")
    extra = sorted(set(params) - COMMON_KEYS - TYPE_KEYS[rope_type])
    if extra:
        raise CheckpointError(f"{key}.{extra[0]}={params[extra[0]]!r} is not supported with rope_type {rope_type!r}")
    for name in REQUIRED.get(rope_type, ()):
        if params.get(name) is None:
            raise CheckpointError(f"{key}.rope_type {rope_type!r} needs {key}.{name}")
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    partial = float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)))
    max_pos = max_position_embeddings
    fields: dict = {"rope_theta": theta, "partial_rotary_factor": partial, "max_position_embeddings": max_pos}
    scaling = {"rope_type": rope_type, **{k: v for k, v in params.items() if k not in COMMON_KEYS}}
    if rope_type in ("default", "dynamic"):  # dynamic == default up to max_position_embeddings
        fields["rope_scaling"] = None if rope_type == "default" else scaling
        return fields
    if rope_type in ("llama3", "yarn", "longrope"):
        # transformers prefers a top-level original_max_position_embeddings (Phi-3 saves it there).
        original = raw.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
        scaling["original_max_position_embeddings"] = int(original or max_pos)
    if rope_type == "yarn":
        _resolve_yarn(scaling, max_pos)
    if rope_type == "longrope":
        original = scaling["original_max_position_embeddings"]
        factor = scaling.get("factor") or max_pos / original
        if scaling.get("attention_factor") is None:
            scaling["attention_factor"] = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        if max_pos > original:
            fields["max_position_embeddings"] = original
            fields["notes"] = [
                f"rope_scaling longrope: context capped at original_max_position_embeddings={original} "
                f"(max_position_embeddings={max_pos}): past it transformers switches every position to "
                "long_factor while cached keys keep short_factor, which a batching server cannot reproduce"
            ]
    fields["rope_scaling"] = scaling
    return fields


def _resolve_yarn(scaling: dict, max_pos: int) -> None:
    original = scaling["original_max_position_embeddings"]
    factor = scaling.get("factor") or max_pos / original
    scaling["factor"] = factor

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if scaling.get("attention_factor") is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        scaling["attention_factor"] = (
            float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)
        )


def inv_freq(cfg: DecoderConfig) -> torch.Tensor:
    """Inverse frequencies [rotary_dim / 2], float32."""
    dim, base = cfg.rotary_dim, cfg.rope_theta
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    default = 1.0 / (base**exponents)
    s = cfg.rope_scaling or {"rope_type": "default"}
    kind = s["rope_type"]
    if kind in ("default", "dynamic"):
        return default
    if kind == "linear":
        return default / s["factor"]
    if kind == "llama3":
        return _llama3(default, s)
    if kind == "yarn":
        return _yarn(cfg, s)
    if kind == "longrope":
        return 1.0 / (torch.tensor(s["short_factor"], dtype=torch.float32) * base**exponents)
    raise CheckpointError(f"rope_type {kind!r} is not supported")


def attention_factor(cfg: DecoderConfig) -> float:
    """The factor transformers multiplies cos and sin by (yarn, longrope; else 1)."""
    return float((cfg.rope_scaling or {}).get("attention_factor") or 1.0)


def _llama3(inv: torch.Tensor, s: dict) -> torch.Tensor:
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(cfg: DecoderConfig, s: dict) -> torch.Tensor:
    dim, base, factor = cfg.rotary_dim, cfg.rope_theta, s["factor"]
    original = s["original_max_position_embeddings"]
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(torch.float32) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extra_factor = 1 - ramp
    return interpolation * (1 - extra_factor) + extrapolation * extra_factor


def rope_tables(cfg: DecoderConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [max_position_embeddings, rotary_dim / 2], float32, computed as transformers does."""
    freqs = torch.arange(cfg.max_position_embeddings, dtype=torch.int64).float()[:, None] * inv_freq(cfg)[None, :]
    scale = attention_factor(cfg)
    return (freqs.cos() * scale).numpy(), (freqs.sin() * scale).numpy()
