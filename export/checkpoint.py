"""Checkpoints on disk: Kiln's own and Hugging Face decoder directories.

Kiln's layout is `config.json` (model_type "kiln-llama") + `model.safetensors` +
`tokenizer.json`. A Hugging Face directory (`config.json`, safetensors weights in fp32, fp16 or
bf16, single or sharded, and a `tokenizer.json`) of a supported family (`export/models/families`:
Llama, Mistral, Qwen2/3, Phi-3, Gemma/Gemma 2) loads into the same `DecoderLM`: the family maps
its config onto `DecoderConfig` and its weight names onto Kiln's. Anything the graph contract
cannot represent is refused with a message naming the config key, never silently approximated.
State-space models (Kiln's "kiln-hybrid", Hugging Face "mamba" and "mamba2") load into
`HybridLM` instead (export/hybrid_checkpoint.py).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_model
from tokenizers import Tokenizer

from export.hybrid_checkpoint import HYBRID_TYPES, load_hybrid
from export.models.config import CheckpointError, DecoderConfig
from export.models.decoder import DecoderLM
from export.models.families import family_for
from export.models.families.common import special_tokens
from export.models.hybrid import HybridConfig, HybridLM

__all__ = ["Checkpoint", "CheckpointError", "hf_config_to_kiln", "load_checkpoint", "save_checkpoint"]


@dataclass
class Checkpoint:
    model: DecoderLM | HybridLM
    tokenizer: Tokenizer
    path: Path
    source: str  # "kiln" | "huggingface"
    add_bos: bool = True

    @property
    def config(self) -> DecoderConfig | HybridConfig:
        return self.model.config


def save_checkpoint(model: DecoderLM | HybridLM, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
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
        raise CheckpointError(f"{path}: no config.json (expected a Kiln or Hugging Face decoder checkpoint)")
    raw = json.loads(cfg_file.read_text())
    if not (path / "tokenizer.json").exists():
        raise CheckpointError(f"{path}: no tokenizer.json (the fast-tokenizer file is required)")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    if raw.get("model_type") == "kiln-llama":
        cfg = DecoderConfig.from_dict(raw)
        state = load_file(str(path / "model.safetensors"))
        return Checkpoint(_build(cfg, state, path), tokenizer, path, "kiln")
    if raw.get("model_type") in HYBRID_TYPES:
        hybrid = load_hybrid(path, raw, tokenizer, _load_hf_weights, _generation_config(path))
        source = "kiln" if raw["model_type"] == "kiln-hybrid" else "huggingface"
        add_bos = True if source == "kiln" else _hf_add_bos(path, tokenizer)
        return Checkpoint(hybrid, tokenizer, path, source, add_bos=add_bos)
    try:
        family = family_for(raw)
        cfg = hf_config_to_kiln(raw, tokenizer, _generation_config(path))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    state = family.map_weights(_load_hf_weights(path), cfg)
    return Checkpoint(_build(cfg, state, path), tokenizer, path, "huggingface", add_bos=_hf_add_bos(path, tokenizer))


def hf_config_to_kiln(raw: dict, tokenizer: Tokenizer | None = None, generation: dict | None = None) -> DecoderConfig:
    """A Hugging Face `config.json` (and `generation_config.json`) as a `DecoderConfig`."""
    cfg = family_for(raw).from_hf_config(raw)
    return dataclasses.replace(cfg, **special_tokens(raw, generation or {}, tokenizer))


def _build(cfg: DecoderConfig, state: dict[str, torch.Tensor], path: Path) -> DecoderLM:
    model = DecoderLM(cfg)
    if cfg.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.eval()


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


def _generation_config(path: Path) -> dict:
    file = path / "generation_config.json"
    return json.loads(file.read_text()) if file.exists() else {}


def _hf_add_bos(path: Path, tokenizer: Tokenizer) -> bool:
    """Whether the gateway should prepend BOS, as `AutoTokenizer(text)` would.

    `add_bos_token` in tokenizer_config.json decides when present. Otherwise a tokenizer.json
    post-processor (Llama 3's, Gemma's template) is asked directly; Qwen's adds nothing. A
    tokenizer without a post-processor (Kiln's own) gets BOS, as Kiln's models were trained.
    """
    tc = path / "tokenizer_config.json"
    if tc.exists():
        config = json.loads(tc.read_text())
        if "add_bos_token" in config:
            return bool(config["add_bos_token"])
    if json.loads(tokenizer.to_str()).get("post_processor") is None:
        return True
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    return len(full) > len(plain) and full[:1] != plain[:1]  # something was put in front
