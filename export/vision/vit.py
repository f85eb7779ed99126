"""A small Vision Transformer of our own: conv patch embedding, CLS token, pre-norm blocks.

DINO/ViT layout (learned position embeddings over CLS + patches, the CLS token's final
state feeds the head). Attention is written with plain matmuls so the ONNX graph is simple
and matches PyTorch to float precision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class ViTConfig:
    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    num_classes: int = 10
    stem: str = "patch"  # "patch": one patch_size×patch_size conv; "conv": 3×3 stride-2 convs down to the same grid

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _stem(c: ViTConfig) -> nn.Module:
    """Patch embedding: [B, C, H, W] → [B, dim, H/p, W/p]. The conv stem (Xiao et al., 2021,
    "Early convolutions help transformers see better") reaches the same patch grid through
    log2(p) overlapping 3×3 stride-2 convolutions and trains far faster on small data."""
    if c.stem == "patch":
        return nn.Conv2d(c.in_channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
    if c.stem != "conv" or c.patch_size & (c.patch_size - 1):
        raise ValueError("stem must be `patch`, or `conv` with a power-of-two patch_size")
    layers: list[nn.Module] = []
    steps = c.patch_size.bit_length() - 1
    ch = c.in_channels
    for i in range(steps):
        out = c.dim if i == steps - 1 else max(16, c.dim >> (steps - 1 - i))
        layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1)]
        if i < steps - 1:
            layers += [nn.BatchNorm2d(out), nn.GELU()]
        ch = out
    return nn.Sequential(*layers)


class ViT(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        c = self.config = config
        if c.image_size % c.patch_size or c.dim % c.heads:
            raise ValueError("image_size must be a multiple of patch_size and dim a multiple of heads")
        patches = (c.image_size // c.patch_size) ** 2
        self.patch_embed = _stem(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, c.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # [B, patches, dim]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))
