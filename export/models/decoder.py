"""The decoder every family is built from, whose forward pass *is* Kiln's serving contract.

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
P may be 0 (prefill) or the full cache length (decode over a preallocated buffer). Cache
column c holds position c (the engine writes a row's tokens at their positions), which is
what lets a sliding window be masked inside the graph from `position_ids` alone.

Family differences are `DecoderConfig` fields (biases, q/k norms, (1 + w) norms, embedding
scale, GeGLU, partial rotary, RoPE scaling, windows, softcaps, Gemma 2's extra norms).
Parameter names follow Hugging Face's Llama, so a family's weights load after a rename.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from export.models.config import DecoderConfig
from export.models.rope import attention_factor, inv_freq

Bias = tuple[torch.Tensor, torch.Tensor]  # additive attention biases over (past, new) keys


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, unit_offset: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset  # Gemma stores w and scales by (1 + w)
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        scale = 1.0 + self.weight if self.unit_offset else self.weight
        return scale * (x * torch.rsqrt(variance + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rot: int = 0) -> torch.Tensor:
    """Rotate each head, or only its first `rot` dims (partial rotary: the rest pass through)."""
    if not rot:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer: int) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = d = cfg.head_dim
        self.rotary_dim = cfg.rotary_dim if cfg.rotary_dim < d else 0  # 0: the whole head
        self.scale = cfg.attention_scale
        self.softcap = cfg.attn_softcap
        self.window = cfg.window(layer)
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * d, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * d, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * d, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.num_heads * d, cfg.hidden_size, bias=cfg.o_proj_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.norm_unit_offset)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.norm_unit_offset)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        biases: Bias,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bsz, seq, _ = x.shape
        groups = self.num_heads // self.num_kv_heads
        q = self.q_proj(x).view(bsz, seq, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if cos is not None and sin is not None:  # None: no rotary positions (a hybrid with learned or no positions)
            q, k = apply_rotary(q, cos, sin, self.rotary_dim), apply_rotary(k, cos, sin, self.rotary_dim)
        # Grouped-query attention without materialising repeated K/V: split the query heads
        # into [kv_heads, groups] and broadcast K/V over the group axis. No reshape touches
        # the past length, so an empty past (P = 0) exports and runs like any other.
        q5 = q.reshape(bsz, self.num_kv_heads, groups, seq, self.head_dim) * self.scale
        pk, pv = past_k.unsqueeze(2), past_v.unsqueeze(2)
        k5, v5 = k.unsqueeze(2), v.unsqueeze(2)
        s_past = torch.matmul(q5, pk.transpose(3, 4))
        s_new = torch.matmul(q5, k5.transpose(3, 4))
        if self.softcap:
            s_past = torch.tanh(s_past / self.softcap) * self.softcap
            s_new = torch.tanh(s_new / self.softcap) * self.softcap
        bias_past, bias_new = biases
        probs = torch.softmax(torch.cat((s_past + bias_past, s_new + bias_new), dim=-1), dim=-1)
        past_len = past_k.shape[2]
        out = torch.matmul(probs[..., :past_len], pv) + torch.matmul(probs[..., past_len:], v5)
        out = out.reshape(bsz, self.num_heads, seq, self.head_dim).transpose(1, 2).reshape(bsz, seq, -1)
        return self.o_proj(out), k, v


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.act = cfg.hidden_act
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        if self.act == "silu":
            gate = F.silu(gate)
        else:
            gate = F.gelu(gate, approximate="tanh" if self.act == "gelu_tanh" else "none")
        return self.down_proj(gate * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer: int) -> None:
        super().__init__()
        eps, offset = cfg.rms_norm_eps, cfg.norm_unit_offset
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps, offset)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps, offset)  # before the MLP (Llama's name)
        self.mlp = MLP(cfg)
        if cfg.sandwich_norm:  # Gemma 2: each sub-block's output is normalised before the residual add
            self.attn_output_norm = RMSNorm(cfg.hidden_size, eps, offset)
            self.mlp_output_norm = RMSNorm(cfg.hidden_size, eps, offset)

    def forward(self, x, cos, sin, biases, past_k, past_v):  # type: ignore[no-untyped-def]
        attn, k, v = self.self_attn(self.input_layernorm(x), cos, sin, biases, past_k, past_v)
        mlp_in = x + (self.attn_output_norm(attn) if hasattr(self, "attn_output_norm") else attn)
        out = self.mlp(self.post_attention_layernorm(mlp_in))
        out = self.mlp_output_norm(out) if hasattr(self, "mlp_output_norm") else out
        return mlp_in + out, k, v


class DecoderLM(nn.Module):
    """Decoder LM of any supported family (see `DecoderConfig`)."""

    inv_freq: torch.Tensor  # a buffer (not a parameter): RoPE frequencies

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_unit_offset)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("inv_freq", inv_freq(cfg), persistent=False)
        self.rope_scale = attention_factor(cfg)
        self.apply(self._init_weights)

    @staticmethod
    def _window(layer: nn.Module) -> int:
        """The layer's attention window (0 = full attention)."""
        return int(layer.self_attn.window)  # type: ignore[union-attr, arg-type]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Llama's initialisation (N(0, 0.02)): PyTorch's default N(0, 1) embedding makes a tied
        # head nearly one-hot, which trains badly and makes random test models degenerate.
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _biases(self, position_ids: torch.Tensor, attention_mask: torch.Tensor, past_len: int) -> dict[int, Bias]:
        """Additive biases [B, 1, 1, S or 1, keys] per distinct window (0 = full attention)."""
        seq = position_ids.shape[1]
        neg = torch.finfo(torch.float32).min
        mask = attention_mask.to(torch.bool)
        past_ok = mask[:, None, :past_len]  # [B, 1, P]
        idx = torch.arange(seq, device=position_ids.device)
        new_ok = (idx[None, :] <= idx[:, None])[None] & mask[:, None, past_len:]  # [B, S, S]
        out: dict[int, Bias] = {}
        for window in sorted({self._window(layer) for layer in self.layers}):
            p_ok, n_ok = past_ok, new_ok
            if window:
                # Query at position q sees keys at q - window + 1 .. q; past column c is position c.
                q_pos = position_ids[:, :, None]
                cols = torch.arange(past_len, device=position_ids.device)
                p_ok = p_ok & (q_pos - cols[None, None, :] < window)
                n_ok = n_ok & (q_pos - position_ids[:, None, :] < window)
            out[window] = (
                torch.where(p_ok[:, None, None], 0.0, neg),
                torch.where(n_ok[:, None, None], 0.0, neg),
            )
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        cfg = self.config
        biases = self._biases(position_ids, attention_mask, past[0][0].shape[2])
        freqs = position_ids.to(torch.float32).unsqueeze(-1) * self.inv_freq  # [B, S, R/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = (emb.cos() * self.rope_scale).unsqueeze(1), (emb.sin() * self.rope_scale).unsqueeze(1)
        x = self.embed_tokens(input_ids)
        if cfg.embed_scale != 1.0:
            x = x * cfg.embed_scale  # a float32 constant, as transformers multiplies
        new_kv = []
        for layer, (pk, pv) in zip(self.layers, past, strict=True):
            x, k, v = layer(x, cos, sin, biases[self._window(layer)], pk, pv)
            new_kv.append((k, v))
        logits = self.lm_head(self.norm(x))
        if cfg.final_softcap:
            logits = torch.tanh(logits / cfg.final_softcap) * cfg.final_softcap
        return logits, new_kv

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

    def __init__(self, model: DecoderLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_mask, *flat_past):  # type: ignore[no-untyped-def]
        past = [(flat_past[2 * i], flat_past[2 * i + 1]) for i in range(len(flat_past) // 2)]
        logits, new_kv = self.model(input_ids, position_ids, attention_mask, past)
        flat: list[torch.Tensor] = [logits]
        for k, v in new_kv:
            flat.extend((k, v))
        return tuple(flat)
