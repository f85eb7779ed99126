"""A hybrid decoder LM: Mamba blocks beside Kiln's Llama attention, state held outside.

The config names the layer pattern (`"mamba,mamba,attention,mamba"`; "mamba2" for Mamba-2
mixers), the norm (RMSNorm or LayerNorm) and the positions (rotary, learned or none). A Mamba
layer is norm → mixer → residual (as in Hugging Face's `MambaBlock`); an attention layer is Llama's block (attention
and gated MLP, each pre-normed). With every layer "mamba", RMSNorm and no positions this is
exactly `MambaForCausalLM`, and the parameter names (`backbone.embeddings`,
`backbone.layers.N.mixer.*`, `backbone.norm_f`, `lm_head`) are Hugging Face's, so its
checkpoints load without renaming (likewise "mamba2" layers and `Mamba2ForCausalLM`).

Every layer takes a pair of state tensors and returns a pair:
a Mamba layer (conv [B, d_inner, k-1], ssm [B, d_inner, N]; Mamba-2: conv [B, d_inner+2GN, k-1],
ssm [B, H, head_dim, N]) → the advanced pair, an attention
layer (past K, past V [B, KVH, P, D]) → the new tokens' K and V [B, KVH, S, D] (the
engine writes those into its cache, as with Llama). `state_spec()` describes the per-slot
state so a runner can allocate it without knowing the architecture.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from export.models.config import DecoderConfig
from export.models.decoder import MLP, Attention, RMSNorm
from export.models.mamba import MambaDims, MambaMixer
from export.models.mamba2 import Mamba2Dims, Mamba2Mixer
from export.models.rope import inv_freq

LAYER_KINDS = ("mamba", "mamba2", "attention")
NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rotary", "learned", "none")

State = tuple[torch.Tensor, torch.Tensor]


@dataclass
class HybridConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    layers: str = "mamba,mamba,attention,mamba"
    norm: str = "rmsnorm"
    positions: str = "rotary"
    norm_eps: float = 1e-5
    # Mamba layers
    state_size: int = 16
    conv_kernel: int = 4
    expand: int = 2
    time_step_rank: int = 0  # 0: ceil(hidden / 16)
    use_bias: bool = False
    use_conv_bias: bool = True
    # Mamba-2 layers (d_inner = expand * hidden split into heads; B/C shared by groups of heads)
    mamba2_heads: int = 8
    mamba2_groups: int = 1
    # attention layers
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 512
    rope_theta: float = 10000.0
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    eos_token_ids: list[int] = field(default_factory=list)  # every id that ends generation

    def __post_init__(self) -> None:
        if not self.eos_token_ids:
            self.eos_token_ids = [self.eos_token_id]
        for key, value, allowed in (("norm", self.norm, NORMS), ("positions", self.positions, POSITIONS)):
            if value not in allowed:
                raise ValueError(f"hybrid config: {key}={value!r} is not supported (one of {', '.join(allowed)})")
        bad = [kind for kind in self.layer_kinds if kind not in LAYER_KINDS]
        if bad or not self.layer_kinds:
            raise ValueError(f"hybrid config: layers={self.layers!r} must list {' / '.join(LAYER_KINDS)} layers")
        if "mamba2" in self.layer_kinds:
            self.mamba2_dims()  # raises if the heads do not divide d_inner
        if "attention" in self.layer_kinds and self.hidden_size % self.num_heads:
            raise ValueError(f"hybrid config: hidden_size {self.hidden_size} is not a multiple of num_heads")

    @property
    def layer_kinds(self) -> list[str]:
        return [kind.strip() for kind in self.layers.split(",") if kind.strip()]

    @property
    def num_layers(self) -> int:
        return len(self.layer_kinds)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def mamba_dims(self) -> MambaDims:
        return MambaDims(
            self.hidden_size,
            self.state_size,
            self.conv_kernel,
            self.expand,
            self.time_step_rank,
            self.use_bias,
            self.use_conv_bias,
        )

    def mamba2_dims(self) -> Mamba2Dims:
        return Mamba2Dims(
            self.hidden_size,
            self.state_size,
            self.conv_kernel,
            self.expand,
            self.mamba2_heads,
            self.mamba2_groups,
            self.use_bias,
            self.use_conv_bias,
            self.norm_eps,
        )

    def attention_config(self) -> DecoderConfig:
        """The attention layers' settings as the shared decoder blocks read them (Llama's defaults)."""
        return DecoderConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.norm_eps,
        )

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"model_type": "kiln-hybrid", **asdict(self)}, indent=2))

    @classmethod
    def from_dict(cls, data: dict) -> HybridConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def make_norm(cfg: HybridConfig) -> nn.Module:
    if cfg.norm == "layernorm":
        return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
    return RMSNorm(cfg.hidden_size, cfg.norm_eps)


class MambaLayer(nn.Module):
    def __init__(self, cfg: HybridConfig, kind: str = "mamba") -> None:
        super().__init__()
        self.norm = make_norm(cfg)
        self.mixer = MambaMixer(cfg.mamba_dims()) if kind == "mamba" else Mamba2Mixer(cfg.mamba2_dims())

    def forward(self, x: torch.Tensor, valid: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        out, conv, ssm = self.mixer(self.norm(x), valid, *state)
        return x + out, (conv, ssm)


class AttentionLayer(nn.Module):
    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        attn_cfg = cfg.attention_config()
        self.input_layernorm = make_norm(cfg)
        self.self_attn = Attention(attn_cfg, 0)  # layer index only picks a sliding window: none here
        self.post_attention_layernorm = make_norm(cfg)
        self.mlp = MLP(attn_cfg)

    def forward(self, x, cos, sin, biases, state: State) -> tuple[torch.Tensor, State]:  # type: ignore[no-untyped-def]
        attn, k, v = self.self_attn(self.input_layernorm(x), cos, sin, biases, *state)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), (k, v)


class Backbone(nn.Module):
    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.positions == "learned":
            self.embed_positions = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.layers = nn.ModuleList(
            AttentionLayer(cfg) if kind == "attention" else MambaLayer(cfg, kind) for kind in cfg.layer_kinds
        )
        self.norm_f = make_norm(cfg)


def attention_biases(attention_mask: torch.Tensor, past_len: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive biases over the past and the new block, broadcast over [B, KVH, groups, S, keys]
    (the decoder's full-attention biases: causal in the new block, the mask across the past)."""
    neg = torch.finfo(torch.float32).min
    mask = attention_mask.to(torch.bool)
    bias_past = torch.where(mask[:, None, None, None, :past_len], 0.0, neg)
    idx = torch.arange(seq, device=attention_mask.device)
    new_ok = (idx[None, :] <= idx[:, None])[None, :, :] & mask[:, None, past_len:]  # [B, S, S]
    return bias_past, torch.where(new_ok[:, None, None, :, :], 0.0, neg)


class HybridLM(nn.Module):
    inv_freq: torch.Tensor  # a buffer (not a parameter): RoPE frequencies of the attention layers

    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = Backbone(cfg)
        self.register_buffer("inv_freq", inv_freq(cfg.attention_config()), persistent=False)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
        for layer in self.backbone.layers:
            if isinstance(layer, MambaLayer):
                layer.mixer.reset_ssm_parameters()

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor, past: list[State]
    ) -> tuple[torch.Tensor, list[State]]:
        """The graph contract (export/hybrid_graph.py): attention_mask is [B, P + S]; its last S
        columns mark real tokens (real first), which is also what a Mamba layer advances on."""
        cfg = self.config
        seq = input_ids.shape[1]
        valid = attention_mask[:, attention_mask.shape[1] - seq :]
        x = self.backbone.embeddings(input_ids)
        if cfg.positions == "learned":
            x = x + self.backbone.embed_positions(position_ids)
        cos = sin = bias_past = bias_new = None
        kinds = cfg.layer_kinds
        if "attention" in kinds:
            past_len = past[kinds.index("attention")][0].shape[2]
            bias_past, bias_new = attention_biases(attention_mask, past_len, seq)
            if cfg.positions == "rotary":
                freqs = position_ids.to(torch.float32).unsqueeze(-1) * self.inv_freq  # [B, S, D/2]
                emb = torch.cat((freqs, freqs), dim=-1)
                cos, sin = emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)
        present: list[State] = []
        for layer, state in zip(self.backbone.layers, past, strict=True):
            if isinstance(layer, MambaLayer):
                x, new = layer(x, valid, state)
            else:
                x, new = layer(x, cos, sin, (bias_past, bias_new), state)
            present.append(new)
        return self.lm_head(self.backbone.norm_f(x)), present

    def state_spec(self) -> list[dict]:
        """Per-slot state of each layer, in layer order (the manifest's `state` field)."""
        cfg = self.config
        spec: list[dict] = []
        for i, layer in enumerate(self.backbone.layers):
            if isinstance(layer, MambaLayer):
                shapes = layer.mixer.state_shapes()
                spec.append({"kind": "recurrent", "tensors": {f"{k}.{i}": v for k, v in shapes.items()}})
            else:
                shape = [cfg.num_kv_heads, "positions", cfg.head_dim]
                spec.append({"kind": "attention_kv", "tensors": {f"key.{i}": shape, f"value.{i}": list(shape)}})
        return spec

    def empty_state(self, batch: int) -> list[State]:
        """Fresh rows: zero recurrent state, an empty (P = 0) KV past."""
        out: list[State] = []
        for entry in self.state_spec():
            shapes = [[batch, *(0 if d == "positions" else d for d in s)] for s in entry["tensors"].values()]
            out.append((torch.zeros(shapes[0]), torch.zeros(shapes[1])))
        return out

    def logits_full(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Plain full-sequence forward from a fresh state (training, reference generation)."""
        bsz, seq = input_ids.shape
        pos = torch.arange(seq).unsqueeze(0).expand(bsz, seq)
        mask = torch.ones(bsz, seq, dtype=torch.int64)
        logits, _ = self.forward(input_ids, pos, mask, self.empty_state(bsz))
        return logits


class HybridOnnxWrapper(nn.Module):
    """Flattens the per-layer state pairs into positional tensors for the exporter."""

    def __init__(self, model: HybridLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_mask, *flat):  # type: ignore[no-untyped-def]
        past = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(flat) // 2)]
        logits, present = self.model(input_ids, position_ids, attention_mask, past)
        return (logits, *(t for pair in present for t in pair))
