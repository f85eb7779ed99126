"""`DecoderConfig`: one description of every decoder family Kiln exports.

transformers has a config class and a modeling file per family; most of what differs between
Llama, Qwen, Mistral, Phi-3 and Gemma is a handful of switches (biases, norms, RoPE scaling,
activation, attention window, softcaps). Kiln keeps those switches as fields of one config and
builds every family from the same blocks (`export/models/decoder.py`, `export/fused_graph.py`);
a family module (`export/models/families/`) only maps its `config.json` and weight names onto
them. The defaults are Kiln's own Llama, so `LlamaConfig(...)` (the same class) keeps meaning
what it always did.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

ACTIVATIONS = ("silu", "gelu_tanh", "gelu")  # SwiGLU; GeGLU with tanh GELU; GeGLU with erf GELU
FULL, SLIDING = "full_attention", "sliding_attention"  # transformers' `layer_types` values


class CheckpointError(ValueError):
    """The directory is not a checkpoint Kiln can load; the message says why (naming the key)."""


@dataclass
class DecoderConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 688
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    # --- what differs between families (the defaults are Llama's) ---------------------------
    family: str = "llama"
    head_dim: int = 0  # 0: hidden_size // num_heads
    # RoPE scaling after `export.models.rope.parse_rope`: None, or {"rope_type": ..., params}
    rope_scaling: dict | None = None
    partial_rotary_factor: float = 1.0  # rotary on the first head_dim * factor dims only (Phi)
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2, Llama attention_bias)
    o_proj_bias: bool = False  # the output projection too (Llama attention_bias, not Qwen2)
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over each head of q and k before rotary (Qwen3)
    norm_unit_offset: bool = False  # RMSNorm scales by (1 + weight) (Gemma)
    embed_scale: float = 1.0  # embeddings multiplied by this (Gemma: sqrt(hidden_size))
    hidden_act: str = "silu"
    attn_scale: float = 0.0  # 0: head_dim ** -0.5 (Gemma 2: query_pre_attn_scalar ** -0.5)
    attn_softcap: float = 0.0  # 0: none; else scores -> cap * tanh(scores / cap) (Gemma 2)
    final_softcap: float = 0.0  # the same on the logits
    sandwich_norm: bool = False  # extra RMSNorms on the attention and MLP outputs (Gemma 2)
    sliding_window: int = 0  # 0: none; else a token sees itself and the window - 1 before it
    layer_types: list[str] = field(default_factory=list)  # per layer FULL | SLIDING; [] = all one kind
    eos_token_ids: list[int] = field(default_factory=list)  # every id that ends generation
    notes: list[str] = field(default_factory=list)  # limits the export had to impose, for the report

    def __post_init__(self) -> None:
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_heads
        if not self.eos_token_ids:
            self.eos_token_ids = [self.eos_token_id]
        if self.hidden_act not in ACTIVATIONS:
            raise CheckpointError(f"hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")
        if self.num_heads % self.num_kv_heads:
            raise CheckpointError(
                f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads {self.num_kv_heads}"
            )
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise CheckpointError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        bad = sorted(set(self.layer_types) - {FULL, SLIDING})
        if bad:
            raise CheckpointError(f"layer_types {bad[0]!r} is not supported (only {FULL!r} and {SLIDING!r})")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def attention_scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)

    def window(self, layer: int) -> int:
        """Sliding window of `layer` (0: attends to everything before it)."""
        if not self.sliding_window:
            return 0
        if not self.layer_types or self.layer_types[layer] == SLIDING:
            return self.sliding_window
        return 0

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"model_type": "kiln-llama", **asdict(self)}, indent=2))

    @classmethod
    def from_dict(cls, data: dict) -> DecoderConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
