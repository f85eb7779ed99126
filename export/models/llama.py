"""A compact Llama-style decoder whose forward pass *is* Kiln's serving contract.

The KV cache lives outside the model, in a buffer the serving engine allocates once.
So the forward pass never concatenates past and new keys/values: it attends to the past
and to the new tokens separately (two score blocks, one softmax) and returns only the
keys/values of the new tokens. The engine writes those into its cache in place, which is
what keeps the per-token hot path free of allocations proportional to sequence length.

Graph contract (the ONNX export keeps these names and layouts):

    inputs   input_ids        int64  [B, S]
             position_ids     int64  [B, S]      absolute positions (RoPE)
             attention_mask   int64  [B, P + S]  1 = attend; past part marks valid cache
                                                 columns, new part marks real (non-pad) tokens
             past_key.{i}     f32    [B, KVH, P, D]
             past_value.{i}   f32    [B, KVH, P, D]
    outputs  logits           f32    [B, S, V]
             new_key.{i}      f32    [B, KVH, S, D]   (RoPE already applied)
             new_value.{i}    f32    [B, KVH, S, D]

Within the new block attention is causal by index; across the past it follows the mask.
P may be 0 (prefill) or the full cache length (decode over a preallocated buffer).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class LlamaConfig:
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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"model_type": "kiln-llama", **asdict(self)}, indent=2))

    @classmethod
    def from_dict(cls, data: dict) -> LlamaConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [B, 1, S, D] for the given absolute positions (computed in-graph)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq  # [B, S, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention_biases(attention_mask: torch.Tensor, past_len: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive biases over the past and the new block, broadcast over [B, KVH, groups, S, keys]."""
    neg = torch.finfo(torch.float32).min
    mask = attention_mask.to(torch.bool)
    bias_past = torch.where(mask[:, None, None, None, :past_len], 0.0, neg)
    idx = torch.arange(seq, device=attention_mask.device)
    causal = idx[None, :] <= idx[:, None]  # [S, S]
    new_ok = causal[None, :, :] & mask[:, None, past_len:]  # [B, S, S]
    bias_new = torch.where(new_ok[:, None, None, :, :], 0.0, neg)
    return bias_past, bias_new


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        bias_past: torch.Tensor,
        bias_new: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bsz, seq, _ = x.shape
        groups = self.num_heads // self.num_kv_heads
        q = self.q_proj(x).view(bsz, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if cos is not None:  # None: no rotary positions (a hybrid with learned or no positions)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        # Grouped-query attention without materialising repeated K/V: split the query heads
        # into [kv_heads, groups] and broadcast K/V over the group axis. No reshape touches
        # the past length, so an empty past (P = 0) exports and runs like any other.
        q5 = q.reshape(bsz, self.num_kv_heads, groups, seq, self.head_dim) / math.sqrt(self.head_dim)
        pk, pv = past_k.unsqueeze(2), past_v.unsqueeze(2)
        k5, v5 = k.unsqueeze(2), v.unsqueeze(2)
        s_past = torch.matmul(q5, pk.transpose(3, 4))
        s_new = torch.matmul(q5, k5.transpose(3, 4))
        scores = torch.cat((s_past + bias_past, s_new + bias_new), dim=-1)
        probs = torch.softmax(scores, dim=-1)
        past_len = past_k.shape[2]
        out = torch.matmul(probs[..., :past_len], pv) + torch.matmul(probs[..., past_len:], v5)
        out = out.reshape(bsz, self.num_heads, seq, self.head_dim).transpose(1, 2).reshape(bsz, seq, -1)
        return self.o_proj(out), k, v


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, bias_past, bias_new, past_k, past_v):  # type: ignore[no-untyped-def]
        attn, k, v = self.self_attn(self.input_layernorm(x), cos, sin, bias_past, bias_new, past_k, past_v)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v


class LlamaLM(nn.Module):
    """Decoder LM. Parameter names follow Hugging Face's Llama so its checkpoints load directly."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Llama's initialisation (N(0, 0.02)): PyTorch's default N(0, 1) embedding makes a tied
        # head nearly one-hot, which trains badly and makes random test models degenerate.
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        cfg = self.config
        bias_past, bias_new = attention_biases(attention_mask, past[0][0].shape[2], input_ids.shape[1])
        cos, sin = rope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta)
        x = self.embed_tokens(input_ids)
        new_kv = []
        for layer, (pk, pv) in zip(self.layers, past, strict=True):
            x, k, v = layer(x, cos, sin, bias_past, bias_new, pk, pv)
            new_kv.append((k, v))
        return self.lm_head(self.norm(x)), new_kv

    def empty_past(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.config
        shape = (batch, cfg.num_kv_heads, 0, cfg.head_dim)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(cfg.num_layers)]

    def logits_full(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Plain full-sequence forward (training, reference generation): no cache."""
        bsz, seq = input_ids.shape
        pos = torch.arange(seq).unsqueeze(0).expand(bsz, seq)
        mask = torch.ones(bsz, seq, dtype=torch.int64)
        logits, _ = self.forward(input_ids, pos, mask, self.empty_past(bsz))
        return logits


class OnnxWrapper(nn.Module):
    """Flattens the past list into positional tensors so the exporter sees named inputs."""

    def __init__(self, model: LlamaLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_mask, *flat_past):  # type: ignore[no-untyped-def]
        past = [(flat_past[2 * i], flat_past[2 * i + 1]) for i in range(len(flat_past) // 2)]
        logits, new_kv = self.model(input_ids, position_ids, attention_mask, past)
        flat: list[torch.Tensor] = [logits]
        for k, v in new_kv:
            flat.extend((k, v))
        return tuple(flat)
