"""Mamba-1 selective state-space mixer whose recurrent state lives outside the module.

Like Kiln's attention (`export/models/llama.py`), the layer never keeps state between calls:
it takes the state the engine holds for each row and returns the advanced state, so a
serving engine can keep one preallocated buffer per layer and move rows around freely.

Per layer and row the state is fixed-size, whatever the sequence length:

    conv  [d_inner, k - 1]   the last k-1 inputs of the depthwise causal convolution
    ssm   [d_inner, N]       the selective-scan hidden state h

One step of the recurrence for an input x (after the convolution and SiLU):

    Δ = softplus(dt_proj(x_proj(x)[:R]))      B, C = x_proj(x)[R:R+N], x_proj(x)[R+N:]
    h ← exp(Δ·A) ⊙ h + Δ·B·x                  A = -exp(A_log)   [d_inner, N]
    y = C·h + D·x,  out = out_proj(y · SiLU(z))   where in_proj(u) = [x, z]

Padding without disturbing the state: a position whose `valid` flag is 0 gets Δ = 0, so
exp(Δ·A) = 1 and Δ·B·x = 0 and h passes through unchanged (bit for bit); the convolution state
keeps the last k-1 *valid* inputs. Real tokens must come first in a row (right padding),
which is how Kiln's engine lays out a batch.

Parameter names follow Hugging Face's `MambaMixer`, so `backbone.layers.N.mixer.*` loads as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class MambaDims:
    hidden_size: int
    state_size: int = 16
    conv_kernel: int = 4
    expand: int = 2
    time_step_rank: int = 0  # 0: ceil(hidden / 16), Hugging Face's "auto"
    use_bias: bool = False
    use_conv_bias: bool = True

    @property
    def d_inner(self) -> int:
        return self.expand * self.hidden_size

    @property
    def dt_rank(self) -> int:
        return self.time_step_rank or math.ceil(self.hidden_size / 16)


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


class MambaMixer(nn.Module):
    def __init__(self, dims: MambaDims) -> None:
        super().__init__()
        d, n, r = dims.d_inner, dims.state_size, dims.dt_rank
        self.dims = dims
        self.in_proj = nn.Linear(dims.hidden_size, 2 * d, bias=dims.use_bias)
        self.conv1d = nn.Conv1d(d, d, dims.conv_kernel, groups=d, padding=dims.conv_kernel - 1, bias=dims.use_conv_bias)
        self.x_proj = nn.Linear(d, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1))
        self.D = nn.Parameter(torch.ones(d))
        self.out_proj = nn.Linear(d, dims.hidden_size, bias=dims.use_bias)

    def state_shapes(self) -> dict[str, list[int]]:
        d = self.dims
        return {"conv": [d.d_inner, d.conv_kernel - 1], "ssm": [d.d_inner, d.state_size]}

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's initialisation (S4D-real A, Δ log-uniform in [dt_min, dt_max]) for training from scratch."""
        d, n, r = self.dims.d_inner, self.dims.state_size, self.dims.dt_rank
        self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1))
        self.D.fill_(1.0)
        nn.init.uniform_(self.dt_proj.weight, -(r**-0.5), r**-0.5)
        dt = torch.exp(torch.rand(d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        nn.init.kaiming_uniform_(self.conv1d.weight, a=math.sqrt(5))
        if self.conv1d.bias is not None:
            self.conv1d.bias.zero_()

    def forward(
        self, u: torch.Tensor, valid: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """u [B, S, hidden], valid [B, S] (1 real, 0 pad; real first) → out, new conv, new ssm."""
        dims = self.dims
        x, z = self.in_proj(u).chunk(2, dim=-1)
        lengths = valid.sum(1).to(torch.int64)
        xc, conv_state = causal_conv(x.transpose(1, 2), conv_state, self.conv1d, lengths)
        xc = xc.transpose(1, 2)  # [B, S, d_inner]
        dt, b, c = torch.split(self.x_proj(xc), [dims.dt_rank, dims.state_size, dims.state_size], dim=-1)
        dt = softplus(self.dt_proj(dt)) * valid.to(xc.dtype)[..., None]  # Δ = 0: the state holds
        a = torch.exp(dt[..., None] * -torch.exp(self.A_log))  # [B, S, d_inner, N]
        bx = (dt * xc)[..., None] * b[:, :, None, :]
        y, ssm_state = run_scan(a, bx, c[:, :, None, :], ssm_state)
        y = (y + xc * self.D) * F.silu(z)
        return self.out_proj(y), conv_state, ssm_state
