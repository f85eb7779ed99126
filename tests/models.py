"""The tiny models the tests build (random weights, nothing downloaded), defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from export.models.llama import LlamaConfig

TINY_LLAMA = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
# Hugging Face names for a GQA Llama of the same scale (6 query heads over 2 key/value heads).
TINY_HF_LLAMA = dict(
    hidden_size=96,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def tiny_llama_config(vocab_size: int, **overrides: Any) -> LlamaConfig:
    """Kiln's own Llama at test scale."""
    return LlamaConfig(vocab_size=vocab_size, **{**TINY_LLAMA, "max_position_embeddings": 128, **overrides})


def save_tiny_hf_llama(path: Path, tokenizer: Tokenizer, seed: int = 0, **overrides: Any):  # type: ignore[no-untyped-def]
    """A random transformers LlamaForCausalLM saved as a Hugging Face directory (with tokenizer.json)."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=tokenizer.get_vocab_size(), **{**TINY_HF_LLAMA, **overrides})
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    return model
