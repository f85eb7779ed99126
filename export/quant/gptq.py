"""GPTQ (Frantar et al., 2022): 4-bit codes chosen against the layer's inputs on calibration text.

Round-to-nearest treats every weight alone. GPTQ quantizes a column's weights one input
channel at a time and pushes each rounding error onto the channels not yet quantized, in
proportion to how the inputs co-vary (the Hessian H = XᵀX of the layer's inputs), so the
layer's *output* on real activations moves least. Block parameters (scale, zero point) are
fitted to the already-compensated weights when a block starts, as round-to-nearest fits them
(`blocks.quantize_rtn`; a symmetric block's scale search weighs each input by its energy, the
Hessian's diagonal), and the codes are returned as they are: nothing is
re-quantized afterwards, so the graph holds exactly the grid GPTQ chose.

ONNX Runtime's own GPTQ (`neural_compressor.gptq_quantize`) returns fake-quantized floats that
are then re-quantized with fresh per-block min/max, which leaves the chosen grid whenever a
block's codes do not reach both ends of it; and it handles neither 8 bits nor a shared
embedding. Hence this implementation. One pass collects every Hessian from the fp32 model
(inputs are not re-collected after earlier layers are quantized, as in ONNX Runtime's).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from export.models.decoder import DecoderLM
from export.quant.blocks import BlockQuant, from_codes, symmetric_scales
from export.quant.targets import fused_targets

LAZY_COLUMNS = 128  # channels updated together before the rest of the matrix is touched


def calibration_windows(
    tokenizer: Tokenizer, texts: Sequence[str], bos_id: int, window: int, max_tokens: int, seed: int = 0
) -> list[list[int]]:
    """BOS-prefixed windows drawn from `texts` in a seeded order, `max_tokens` tokens in all."""
    order = np.random.default_rng(seed).permutation(len(texts))
    windows: list[list[int]] = []
    budget = max_tokens
    for i in order:
        ids = tokenizer.encode(texts[int(i)], add_special_tokens=False).ids
        for start in range(0, len(ids), window - 1):
            chunk = [bos_id, *ids[start : start + window - 1]][:budget]
            if len(chunk) < 2:
                continue
            windows.append(chunk)
            budget -= len(chunk)
            if budget <= 1:
                return windows
    return windows


def collect_hessians(model: DecoderLM, windows: Iterable[list[int]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """H = XᵀX / rows for the inputs of the named fused-graph MatMuls, over the calibration windows.

    Weights that read the same input (packed or separate q/k/v, gate and up) share one Hessian.
    """
    targets = fused_targets(model)
    by_module: dict[int, list[str]] = {}
    modules: dict[int, torch.nn.Linear] = {}
    for name in names:
        module = targets[name].input
        by_module.setdefault(id(module), []).append(name)
        modules[id(module)] = module
    sums = {key: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for key, m in modules.items()}
    rows = dict.fromkeys(modules, 0)
    hooks = []
    for key, module in modules.items():

        def hook(_mod: torch.nn.Module, args: tuple[torch.Tensor, ...], key: int = key) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            sums[key] += x.T @ x
            rows[key] += x.shape[0]

        hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for ids in windows:
                model.logits_full(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return {name: sums[key] / max(rows[key], 1) for key, group in by_module.items() for name in group}


def gptq_quantize(
    weight: np.ndarray, hessian: torch.Tensor, bits: int, block_size: int, symmetric: bool, damp: float = 0.01
) -> BlockQuant:
    """Quantize W [K, N] against H [K, K]; block parameters as `blocks.quantize_rtn` fits them.

    Input channel k is row k of W, so each step reads and updates contiguous rows (fp32; the
    Hessian is inverted in fp64).
    """
    k, n = weight.shape
    if k % block_size:
        raise ValueError(f"input dimension {k} is not a multiple of block_size {block_size}")
    maxq = 2**bits - 1
    w = torch.tensor(weight, dtype=torch.float32)  # [K, N]
    h = hessian.to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=torch.float64)
    energy = torch.diag(h).to(torch.float32)  # how much each input channel's error weighs
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).to(torch.float32)

    codes = torch.zeros(k, n, dtype=torch.int32)
    blocks = k // block_size
    scales = torch.zeros(blocks, n, dtype=torch.float32)
    zeros = torch.zeros(blocks, n, dtype=torch.float32)
    lazy = max(block_size, LAZY_COLUMNS // block_size * block_size)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1 = w[i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            row = i1 + i
            g = row // block_size
            if row % block_size == 0:  # fit the block to the weights as compensated so far
                fit = _block_params(w1[i : i + block_size], bits, symmetric, energy[row : row + block_size])
                scales[g], zeros[g] = fit
                divisor = torch.where(scales[g] == 0, 1.0, scales[g])
            q = torch.clamp(torch.round(w1[i] / divisor) + zeros[g], 0, maxq)
            codes[row] = q.to(torch.int32)
            err = (w1[i] - (q - zeros[g]) * scales[g]) / hinv1[i, i]
            w1[i:].addr_(hinv1[i, i:], err, alpha=-1.0)  # rank-1 update, in place
            err1[i] = err
        w[i2:] -= hinv[i1:i2, i2:].T @ err1
    return from_codes(
        codes.T.contiguous().numpy(),
        scales.T.contiguous().numpy(),
        None if symmetric else zeros.T.to(torch.int64).contiguous().numpy(),
        bits,
        block_size,
    )


def _block_params(
    block: torch.Tensor, bits: int, symmetric: bool, energy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per column of a [block, N] slice, as `blocks.quantize_rtn` fits them.

    Symmetric: `blocks.symmetric_scales`, each input's error weighed by its energy (the Hessian's
    diagonal), zero point 2^(bits-1). Asymmetric, as ONNX Runtime's kernels: [min(x, 0),
    max(x, 0)] spans the codes 0 .. 2^bits - 1.
    """
    if symmetric:
        scale = torch.from_numpy(symmetric_scales(block.numpy(), bits, energy.numpy()))
        return scale, torch.full_like(scale, 2 ** (bits - 1))
    lo = torch.clamp(block.min(dim=0).values, max=0.0)
    hi = torch.clamp(block.max(dim=0).values, min=0.0)
    scale = (hi - lo) / (2**bits - 1)
    zero = torch.where(scale == 0, 2 ** (bits - 1), torch.round(-lo / torch.where(scale == 0, 1.0, scale)))
    return scale, torch.clamp(zero, 0, 2**bits - 1)
