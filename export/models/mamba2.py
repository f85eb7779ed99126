"""Mamba-2 mixer (SSD) with the recurrent state held outside, as export/models/mamba.py does for Mamba-1.

Differences from Mamba-1 that shape the state: A is one scalar per head, B and C are shared by
groups of heads, the convolution runs over [x, B, C] together, and a gated RMSNorm (per
group, `y · SiLU(z)` normalised) precedes out_proj. Per layer and row:

    conv  [d_inner + 2·G·N, k - 1]
    ssm   [H, head_dim, N]            h ← exp(Δ_h·A_h)·h + Δ_h·x_h ⊗ B_g(h),  y_h = h·C_g(h) + D_h·x_h

Padding works as in Mamba-1: Δ = 0 at padded positions, so the state passes through them
unchanged. The recurrence runs through the same `selective_scan` (an ONNX `Loop` over S) and
the same single-step path for the decode graph (export/models/ssm_common.py). Parameter names
follow Hugging Face's `Mamba2Mixer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from export.models.ssm_common import causal_conv, reset_conv, run_scan, softplus, softplus_inverse_dt


@dataclass(frozen=True)
class Mamba2Dims:
    hidden_size: int
    state_size: int = 16
    conv_kernel: int = 4
    expand: int = 2
    num_heads: int = 8
    n_groups: int = 1
    use_bias: bool = False
    use_conv_bias: bool = True
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_inner % self.num_heads or self.num_heads % self.n_groups:
            raise ValueError(
                f"mamba2: expand*hidden ({self.d_inner}) must divide into mamba2_heads ({self.num_heads}), "
                f"and the heads into mamba2_groups ({self.n_groups})"
            )

    @property
    def d_inner(self) -> int:
        return self.expand * self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.d_inner // self.num_heads

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.state_size


def segment_sum(x: torch.Tensor) -> torch.Tensor:
    """[..., S] → [..., S, S] with [l, s] = Σ_{s<r≤l} x_r below the diagonal and -inf above.

    Sums of the masked, repeated input rather than differences of a cumulative sum, so no
    cancellation: exp() of it is each position's exact decay from s to l.
    """
    seq = x.shape[-1]
    rep = x[..., None].expand(*x.shape, seq)  # [..., l, s] = x_l
    ones = torch.ones(seq, seq, dtype=torch.bool, device=x.device)
    rep = rep.masked_fill(~torch.tril(ones, diagonal=-1), 0.0)  # keep s < l
    sums = torch.cumsum(rep, dim=-2)
    return sums.masked_fill(~torch.tril(ones), float("-inf"))


def ssd_scan(
    x: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """All S steps of the Mamba-2 recurrence at once (the SSD "attention" form, one chunk).

    x [B, S, H, P], dt [B, S, H] (0 on padding), a = A [H], b/c [B, S, H, N], h [B, H, P, N].
    With a scalar decay per head the S x S decay matrix is only [B, H, S, S], so this is a few
    matmuls instead of S sequential steps. Returns y [B, S, H, P] and the state after step S.
    """
    da = (dt * a).transpose(1, 2)  # [B, H, S], ≤ 0
    decay = torch.exp(segment_sum(da))  # [B, H, l, s]: Π a over (s, l]
    xdt = x * dt[..., None]
    scores = torch.einsum("blhn,bshn->bhls", c, b) * decay
    y = torch.einsum("bhls,bshp->blhp", scores, xdt)
    from_start = torch.exp(torch.cumsum(da, dim=-1)).transpose(1, 2)  # [B, S, H]: decay of h over [1, l]
    y = y + torch.einsum("blhn,bhpn->blhp", c, h) * from_start[..., None]
    to_end = decay[:, :, -1, :]  # [B, H, S]: decay from s to the last step
    h = h * torch.exp(da.sum(-1))[..., None, None] + torch.einsum("bhs,bshn,bshp->bhpn", to_end, b, xdt)
    return y, h


class GatedRMSNorm(nn.Module):
    """RMSNorm of y·SiLU(z) over groups of d_inner / n_groups channels (`MambaRMSNormGated`)."""

    def __init__(self, size: int, group_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.group_size, self.eps = group_size, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y * F.silu(z)
        groups = y.reshape(*y.shape[:-1], -1, self.group_size)
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * groups.reshape(y.shape)


class Mamba2Mixer(nn.Module):
    # S > 1: the parallel SSD form (matmuls over [B, H, S, S]); False: the sequential scan
    # (an ONNX Loop), kept for comparison (loadtests/bench_hybrid_prefill.py).
    parallel: bool = True

    def __init__(self, dims: Mamba2Dims) -> None:
        super().__init__()
        self.dims = dims
        d, h = dims.d_inner, dims.num_heads
        self.in_proj = nn.Linear(dims.hidden_size, d + dims.conv_dim + h, bias=dims.use_bias)
        self.conv1d = nn.Conv1d(
            dims.conv_dim,
            dims.conv_dim,
            dims.conv_kernel,
            groups=dims.conv_dim,
            padding=dims.conv_kernel - 1,
            bias=dims.use_conv_bias,
        )
        self.dt_bias = nn.Parameter(torch.zeros(h))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, h + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(d, d // dims.n_groups, dims.norm_eps)
        self.out_proj = nn.Linear(d, dims.hidden_size, bias=dims.use_bias)

    def state_shapes(self) -> dict[str, list[int]]:
        d = self.dims
        return {"conv": [d.conv_dim, d.conv_kernel - 1], "ssm": [d.num_heads, d.head_dim, d.state_size]}

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        h = self.dims.num_heads
        self.A_log.copy_(torch.log(torch.arange(1, h + 1, dtype=torch.float32)))
        self.D.fill_(1.0)
        self.dt_bias.copy_(softplus_inverse_dt(h, dt_min, dt_max))
        reset_conv(self.conv1d)

    def forward(
        self, u: torch.Tensor, valid: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dims = self.dims
        bsz, seq, _ = u.shape
        h, p, n, g = dims.num_heads, dims.head_dim, dims.state_size, dims.n_groups
        z, xbc, dt = torch.split(self.in_proj(u), [dims.d_inner, dims.conv_dim, h], dim=-1)
        lengths = valid.sum(1).to(torch.int64)
        xbc, conv_state = causal_conv(xbc.transpose(1, 2), conv_state, self.conv1d, lengths)
        x, b, c = torch.split(xbc.transpose(1, 2), [dims.d_inner, g * n, g * n], dim=-1)
        dt = softplus(dt + self.dt_bias) * valid.to(x.dtype)[..., None]  # [B, S, H]; 0 on padding
        a = torch.exp(dt * -torch.exp(self.A_log))[..., None, None]  # [B, S, H, 1, 1]
        x = x.reshape(bsz, seq, h, p)
        # Head j reads group j // (H / G), as Hugging Face's repeat_interleave does.
        b = b.reshape(bsz, seq, g, 1, n).expand(bsz, seq, g, h // g, n).reshape(bsz, seq, h, n)
        c = c.reshape(bsz, seq, g, 1, n).expand(bsz, seq, g, h // g, n).reshape(bsz, seq, h, n)
        if seq > 1 and self.parallel:
            y, ssm_state = ssd_scan(x, dt, -torch.exp(self.A_log), b, c, ssm_state)
        else:
            bx = (dt[..., None] * x)[..., None] * b[:, :, :, None, :]  # [B, S, H, P, N]
            y, ssm_state = run_scan(a, bx, c[:, :, :, None, :], ssm_state)  # y [B, S, H, P]
        y = (y + x * self.D[:, None]).reshape(bsz, seq, dims.d_inner)
        return self.out_proj(self.norm(y, z)), conv_state, ssm_state
