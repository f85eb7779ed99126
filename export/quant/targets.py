"""Which PyTorch Linear layers each MatMul weight of the fused graph was written from.

`export/fused_graph.py` names a projection's weight `layers.{i}.{tag}.w`, stored [in, out]:
`qkv` packs q/k/v along the output axis (families without q/k norms), otherwise `q`, `k`, `v`
stand alone; `o`, `gate`, `up`, `down`; `lm_head` is the head (a tied head: the embedding
table). GPTQ needs each weight's input (the first Linear's), and the dequantized reference
needs to put each weight back into the Linears it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from export.models.decoder import DecoderLM

HEAD = "lm_head"


@dataclass(frozen=True)
class Target:
    """The Linears whose weights, concatenated along the output axis, form one fused weight."""

    linears: tuple[nn.Linear, ...]

    @property
    def input(self) -> nn.Linear:
        return self.linears[0]  # packed linears all read the same input

    def put(self, weight_in_out: np.ndarray) -> None:
        """Write a [in, out] weight back into the Linears (as [out, in] rows, split by each's width)."""
        rows = weight_in_out.T
        start = 0
        with torch.no_grad():
            for linear in self.linears:
                end = start + linear.out_features
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(rows[start:end])))
                start = end
        if start != rows.shape[0]:
            raise ValueError(f"weight has {rows.shape[0]} outputs, the linears {start}")


def fused_targets(model: DecoderLM) -> dict[str, Target]:
    """Fused-graph weight name → its Linears, for every projection and the head."""
    out: dict[str, Target] = {}
    for i, layer in enumerate(model.layers):
        p, attn, mlp = f"layers.{i}.", layer.get_submodule("self_attn"), layer.get_submodule("mlp")
        q, k, v = (_linear(attn, f"{tag}_proj") for tag in ("q", "k", "v"))
        out[p + "qkv.w"] = Target((q, k, v))
        out.update({p + "q.w": Target((q,)), p + "k.w": Target((k,)), p + "v.w": Target((v,))})
        out[p + "o.w"] = Target((_linear(attn, "o_proj"),))
        for tag in ("gate", "up", "down"):
            out[f"{p}{tag}.w"] = Target((_linear(mlp, f"{tag}_proj"),))
    out[HEAD] = Target((model.lm_head,))
    return out


def _linear(module: nn.Module, name: str) -> nn.Linear:
    linear = module.get_submodule(name)
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{name} is a {type(linear).__name__}, not a Linear")
    return linear
