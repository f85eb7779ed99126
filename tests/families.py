"""Tiny random Hugging Face checkpoints of every family Kiln exports, built once per session.

Each is made with transformers' own classes and `save_pretrained` (one in bf16, one in fp16,
one sharded), then exported through `export.pipeline.export_checkpoint` into one shared
repository. Every parameter is jittered after transformers' initialisation: its zero biases
and unit norms would otherwise hide a dropped bias or a wrong norm offset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BASE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    initializer_range=0.1,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


@dataclass(frozen=True)
class Spec:
    config: str  # transformers config class
    model: str  # transformers model class
    overrides: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"  # how the weights are saved (a torch dtype name)
    max_shard_size: str | None = None
    saved: dict[str, Any] = field(default_factory=dict)  # written into config.json afterwards (hub quirks)


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
SPECS: dict[str, Spec] = {
    "llama3": Spec(
        "LlamaConfig",
        "LlamaForCausalLM",
        {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0, "eos_token_id": [2, 5]},
        max_shard_size="100KB",
    ),
    "llama-bias": Spec(
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "head_dim": 32,
            "attention_bias": True,
            "mlp_bias": True,
            "tie_word_embeddings": True,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        },
        dtype="float16",
    ),
    "llama-yarn": Spec(
        "LlamaConfig",
        "LlamaForCausalLM",
        {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}},
    ),
    "qwen2": Spec("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True, "eos_token_id": [2, 3]}, "bfloat16"),
    "qwen3": Spec("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
    "mistral": Spec("MistralConfig", "MistralForCausalLM", {"sliding_window": 8, "head_dim": 16}),
    "phi3": Spec(
        "Phi3Config",
        "Phi3ForCausalLM",
        {
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "partial_rotary_factor": 0.5,
            "sliding_window": 12,
            "original_max_position_embeddings": 64,
            "rope_scaling": {
                "type": "longrope",
                "short_factor": [1.0 + i / 4 for i in range(8)],
                "long_factor": [4.0] * 8,
            },
        },
    ),
    "gemma": Spec(
        "GemmaConfig",
        "GemmaForCausalLM",
        {"head_dim": 32, "num_key_value_heads": 1},
        saved={"hidden_act": "gelu"},  # Gemma's released configs: it means the tanh GELU
    ),
    "gemma2": Spec(
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {
            "head_dim": 16,
            "sliding_window": 8,
            "query_pre_attn_scalar": 24,
            "attn_logit_softcapping": 2.0,
            "final_logit_softcapping": 1.5,
        },
    ),
}
FAMILIES = sorted(SPECS)
WINDOWED = ("mistral", "phi3", "gemma2")


def tiny_tokenizer():  # type: ignore[no-untyped-def]
    from export.tokenizer import train_tokenizer
    from tests.conftest import TINY_TEXT

    return train_tokenizer(TINY_TEXT * 5, vocab_size=320)


def build_hf_checkpoint(name: str, out: Path, seed: int = 0) -> Path:
    import torch
    import transformers

    spec = SPECS[name]
    tokenizer = tiny_tokenizer()
    config = getattr(transformers, spec.config)(**{**BASE, "vocab_size": tokenizer.get_vocab_size(), **spec.overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, spec.model)(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():  # zero biases and unit norms would hide bugs
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    model.to(getattr(torch, spec.dtype)).save_pretrained(out, max_shard_size=spec.max_shard_size or "5GB")
    if spec.saved:
        raw = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**raw, **spec.saved}, indent=2))
    tokenizer.save(str(out / "tokenizer.json"))
    return out


class FamilyZoo:
    """Builds each family's checkpoint, transformers reference and export on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repository = root / "model_repository"
        self._refs: dict[str, Any] = {}
        self._exported: dict[str, dict] = {}

    def checkpoint(self, name: str) -> Path:
        path = self.root / "hf" / name
        if not (path / "config.json").exists():
            build_hf_checkpoint(name, path)
        return path

    def reference(self, name: str):  # type: ignore[no-untyped-def]
        """The transformers model as saved (bf16/fp16 weights upcast), fp32, eager attention."""
        if name not in self._refs:
            import torch
            import transformers

            self._refs[name] = transformers.AutoModelForCausalLM.from_pretrained(
                self.checkpoint(name), dtype=torch.float32, attn_implementation="eager"
            ).eval()
        return self._refs[name]

    def export(self, name: str) -> dict:
        """The export report; the entry is `repository / name`."""
        if name not in self._exported:
            from export.pipeline import export_checkpoint
            from tests.conftest import TINY_TEXT

            self._exported[name] = export_checkpoint(
                self.checkpoint(name), self.repository, name, variants=False, val_texts=TINY_TEXT
            )
        return self._exported[name]

    def entry(self, name: str) -> Path:
        self.export(name)
        return self.repository / name


@pytest.fixture(scope="session")
def family_zoo(tmp_path_factory: pytest.TempPathFactory) -> FamilyZoo:
    pytest.importorskip("transformers")
    return FamilyZoo(tmp_path_factory.mktemp("families"))
