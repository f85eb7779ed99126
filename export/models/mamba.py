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

from export.models.ssm_common import causal_conv, reset_conv, run_scan, softplus, softplus_inverse_dt


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
        self.dt_proj.bias.copy_(softplus_inverse_dt(d, dt_min, dt_max))
        reset_conv(self.conv1d)

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
