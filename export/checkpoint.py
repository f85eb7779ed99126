"""Checkpoints on disk: Kiln's own, Hugging Face Llama-family and Mamba directories.

Kiln's layout is `config.json` (model_type "kiln-llama") + `model.safetensors` +
`tokenizer.json`. A Hugging Face Llama directory (`config.json` with model_type "llama",
safetensors weights, single or sharded, and a `tokenizer.json`) loads into the same
`LlamaLM`, because that module uses Llama's parameter names; only the `model.` prefix differs.
Anything the graph contract cannot represent (RoPE scaling, biases, a head_dim that is not
hidden/heads) is refused with a message, never silently approximated. State-space models
(Kiln's "kiln-hybrid", Hugging Face "mamba" and "mamba2") load into `HybridLM` (export/hybrid_checkpoint.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_model
from tokenizers import Tokenizer

from export.hybrid_checkpoint import REFUSED as REFUSED_SSM
from export.hybrid_checkpoint import SUPPORTED as SUPPORTED_SSM
from export.hybrid_checkpoint import HybridCheckpointError, build_hybrid, check_supported, hf_mamba_config
from export.models.hybrid import HybridConfig, HybridLM
from export.models.llama import LlamaConfig, LlamaLM
from export.tokenizer import special_ids


class CheckpointError(ValueError):
    """The directory is not a checkpoint Kiln can load; the message says why."""


@dataclass
class Checkpoint:
    model: LlamaLM | HybridLM
    tokenizer: Tokenizer
    path: Path
    source: str  # "kiln" | "huggingface"
    add_bos: bool = True

    @property
    def config(self) -> LlamaConfig | HybridConfig:
        return self.model.config


def save_checkpoint(model: LlamaLM | HybridLM, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.to_json(out / "config.json")
    save_model(model, str(out / "model.safetensors"))  # handles the tied embedding
    tokenizer.save(str(out / "tokenizer.json"))
    return out


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{path}: no config.json (expected a Kiln, Hugging Face Llama or Mamba checkpoint)")
    raw = json.loads(cfg_file.read_text())
    if not (path / "tokenizer.json").exists():
        raise CheckpointError(f"{path}: no tokenizer.json (the fast-tokenizer file is required)")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    model_type = raw.get("model_type")
    if model_type == "kiln-llama":
        cfg = LlamaConfig.from_dict(raw)
        state = load_file(str(path / "model.safetensors"))
        return Checkpoint(_build(cfg, state, path), tokenizer, path, "kiln")
    if model_type in ("llama", "mistral", "qwen2") or "LlamaForCausalLM" in raw.get("architectures", []):
        cfg = hf_config_to_kiln(raw, tokenizer)
        state = {_strip(k): v for k, v in _load_hf_weights(path).items() if "rotary_emb" not in k}
        add_bos = _hf_add_bos(path)
        return Checkpoint(_build(cfg, state, path), tokenizer, path, "huggingface", add_bos=add_bos)
    if model_type == "kiln-hybrid":
        state = load_file(str(path / "model.safetensors"))
        return Checkpoint(_build_hybrid(raw, state, path), tokenizer, path, "kiln")
    if model_type in SUPPORTED_SSM or model_type in REFUSED_SSM:
        try:
            check_supported(raw, path)
            model = build_hybrid(hf_mamba_config(raw, special_ids(tokenizer)), _load_hf_weights(path), path)
        except HybridCheckpointError as exc:
            raise CheckpointError(str(exc)) from None
        return Checkpoint(model, tokenizer, path, "huggingface", add_bos=_hf_add_bos(path))
    raise CheckpointError(
        f"{path}: unsupported model_type {model_type!r} (supported: kiln-llama, llama, kiln-hybrid, mamba, mamba2)"
    )


def _build_hybrid(raw: dict, state: dict[str, torch.Tensor], path: Path) -> HybridLM:
    try:
        return build_hybrid(HybridConfig.from_dict(raw), state, path)
    except ValueError as exc:  # HybridConfig's own checks and HybridCheckpointError
        raise CheckpointError(f"{path}: {exc}") from None


def hf_config_to_kiln(raw: dict, tokenizer: Tokenizer | None = None) -> LlamaConfig:
    heads = int(raw["num_attention_heads"])
    hidden = int(raw["hidden_size"])
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        raise CheckpointError("attention/MLP biases are not supported by Kiln's Llama graph")
    if raw.get("head_dim") not in (None, hidden // heads):
        raise CheckpointError(f"head_dim {raw['head_dim']} != hidden_size/num_attention_heads")
    rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        raise CheckpointError(f"RoPE scaling {rope_type!r} is not supported yet")
    theta = float(raw.get("rope_theta", rope.get("rope_theta", 10000.0)))
    specials = special_ids(tokenizer) if tokenizer is not None else {}

    def tok_id(key: str, fallback: int) -> int:
        value = raw.get(key)
        if isinstance(value, list):
            value = value[0]
        if value is None:
            value = specials.get(key)
        return int(value) if value is not None else fallback

    return LlamaConfig(
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        intermediate_size=int(raw["intermediate_size"]),
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        rope_theta=theta,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=tok_id("bos_token_id", 1),
        eos_token_id=tok_id("eos_token_id", 2),
        pad_token_id=tok_id("pad_token_id", tok_id("eos_token_id", 0)),
    )


def _build(cfg: LlamaConfig, state: dict[str, torch.Tensor], path: Path) -> LlamaLM:
    model = LlamaLM(cfg)
    if cfg.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.eval()


def _strip(key: str) -> str:
    return key[len("model.") :] if key.startswith("model.") else key


def _load_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    single = path / "model.safetensors"
    if single.exists():
        return load_file(str(single))
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(path / shard)))
        return state
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json (only safetensors is read)")


def _hf_add_bos(path: Path) -> bool:
    tc = path / "tokenizer_config.json"
    if tc.exists():
        return bool(json.loads(tc.read_text()).get("add_bos_token", True))
    return True
