"""State-space building blocks the Mamba-1 and Mamba-2 mixers share (export/models/mamba.py, mamba2.py).

Both keep their recurrent state outside the module and advance it the same way: a depthwise
causal convolution continuing from the held conv state, a softplus Δ that is 0 on padding (so
the state passes through padded positions unchanged), and a first-order recurrence
h ← a ⊙ h + b run as one step (decode), an ONNX `Loop` (export) or a Python loop (eager).
The families differ in the shapes of a, b and c, not in these steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


@torch.jit.script
def selective_scan(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = a_t ⊙ h_{t-1} + b_t and y_t = Σ_n h_t[..., n] c_t[..., n], time on axis 0.

    Scripted so that ONNX export turns the loop into one `Loop` node over a dynamic number of
    tokens (tracing would unroll it for the example length).
    """
    ys: list[torch.Tensor] = []
    for t in range(a.shape[0]):
        h = a[t] * h + b[t]
        ys.append((h * c[t]).sum(-1))
    return torch.stack(ys, 0), h


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + eˣ), written as max(x, 0) + log(1 + e^-|x|) (the same function, stable for any x).

    ONNX Runtime's Softplus kernel is single-threaded and slow: it took 8% of a Mamba decode
    step at batch 8; these elementwise ops take a fraction of that.
    """
    return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))


def causal_conv(
    x: torch.Tensor, conv_state: torch.Tensor, conv: nn.Conv1d, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution continuing from `conv_state`; x is [B, C, S].

    Returns SiLU(conv) [B, C, S] and the new state: the k-1 inputs before each row's
    `lengths[b]`-th new position, i.e. its last k-1 valid inputs (past ones if it had none).
    """
    full = torch.cat([conv_state, x], dim=-1)  # [B, C, k-1+S]
    if x.shape[-1] == 1:
        # One new token (the decode graph): the window times the taps, summed. ONNX Runtime's
        # depthwise Conv over a k-long window took a third of a Mamba decode step; this is a Mul
        # and a ReduceSum.
        out = (full * conv.weight[:, 0, :]).sum(-1, keepdim=True)
        if conv.bias is not None:
            out = out + conv.bias[:, None]
    else:
        out = F.conv1d(full, conv.weight, conv.bias, groups=full.shape[1])
    keep = conv_state.shape[-1]
    idx = lengths[:, None, None] + torch.arange(keep, device=x.device)[None, None, :]
    new_state = torch.gather(full, 2, idx.expand(full.shape[0], full.shape[1], keep))
    return F.silu(out), new_state


def run_scan(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence over axis 1 of [B, S, ...] tensors.

    One step needs no loop (the decode graph). Exporting S > 1 goes through the scripted loop
    (an ONNX `Loop`); eager PyTorch runs a Python loop over `unbind`, whose backward is one
    stack — indexing `a[t]` in a loop would make autograd write a full-size gradient per step.
    """
    if a.shape[1] == 1:
        h = a[:, 0] * h + b[:, 0]
        return (h * c[:, 0]).sum(-1).unsqueeze(1), h
    if torch.onnx.is_in_onnx_export():
        ys, h = selective_scan(a.transpose(0, 1), b.transpose(0, 1), c.transpose(0, 1), h)
        return ys.transpose(0, 1), h
    out: list[torch.Tensor] = []
    for a_t, b_t, c_t in zip(a.unbind(1), b.unbind(1), c.unbind(1), strict=True):
        h = a_t * h + b_t
        out.append((h * c_t).sum(-1))
    return torch.stack(out, 1), h


def softplus_inverse_dt(size: int, dt_min: float, dt_max: float) -> torch.Tensor:
    """A Δ bias for training from scratch: Δ log-uniform in [dt_min, dt_max], stored as softplus⁻¹(Δ)."""
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))


def reset_conv(conv: nn.Conv1d) -> None:
    """The depthwise convolution's initialisation (PyTorch's default weights, a zero bias)."""
    nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
    if conv.bias is not None:
        conv.bias.zero_()
