"""The block format of ONNX Runtime's MatMulNBits, and the arithmetic that fills and reads it.

A weight W [K, N] (y = x @ W) is quantized per output column n in blocks of `block_size`
consecutive inputs k; each block has a float scale and an integer zero point, and

    W[k, n] = (code[n, k] - zero[n, k // block]) * scale[n, k // block]

Codes are stored row-major per column n, packed along k (low bits first), as uint8
[N, K / block, block * bits / 8]; zero points packed the same way per column,
[N, ceil(K / block * bits / 8)], or absent (symmetric: 2^(bits - 1)). An embedding table
E [V, H] is the transpose of a [H, V] weight, so the same bytes serve GatherBlockQuantized
(gathering rows v) and, for a tied head, MatMulNBits.

Asymmetric round-to-nearest uses ONNX Runtime's own C++ quantizer (`quantize_matmul_{4,8}bits`,
what `MatMulNBitsQuantizer` calls); `from_codes` packs codes chosen elsewhere (GPTQ) identically.

Symmetric blocks have one parameter, the scale, and ONNX Runtime's choice (the entry of largest
magnitude onto code 0, as llama.cpp's q4_0 does) spends the grid on that one outlier. Kiln
searches shrunken scales instead (`symmetric_scales`, the idea of llama.cpp's and AWQ's clip
search): a block keeps the scale whose rounding error is smallest, the outlier clipped if that
pays. On the demo LM it took symmetric GPTQ from +2.25% to +1.44% perplexity (+1.58% with
the inputs weighed alike; docs/quantization.md has the default and asymmetric). Symmetric
codes need no zero points, which ONNX Runtime's AVX2 int8 kernels pay about 9% of a batch-1
decode step for (docs/benchmarks.md, bench-step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

BITS = (4, 8)
SHRINK = np.linspace(1.0, 0.6, 41, dtype=np.float32)  # scale candidates, × the outlier's scale


@dataclass(frozen=True)
class BlockQuant:
    """One quantized [K, N] weight in MatMulNBits' layout."""

    packed: np.ndarray  # uint8 [N, K / block, block * bits / 8]
    scales: np.ndarray  # float32 [N, K / block]
    zero_points: np.ndarray | None  # uint8 [N, ceil(K / block * bits / 8)]; None: symmetric
    bits: int
    block_size: int

    @property
    def n(self) -> int:
        return self.packed.shape[0]

    @property
    def k(self) -> int:
        return self.packed.shape[1] * self.block_size

    @property
    def nbytes(self) -> int:
        zp = 0 if self.zero_points is None else self.zero_points.nbytes
        return self.packed.nbytes + self.scales.nbytes + zp


def symmetric_scales(blocks: np.ndarray, bits: int, importance: np.ndarray | None = None) -> np.ndarray:
    """The scale of each column of each block, `blocks` [..., B, N] → [..., N]: of the outlier's
    scale (largest |w| onto code 0) times each SHRINK factor, the one whose rounding error
    Σ importance_b (w - ŵ)² is least. `importance` [..., B] weighs the block's inputs (GPTQ: the
    Hessian's diagonal, the inputs' energy); None weighs them alike. Factor 1 is a candidate,
    so no block rounds worse than ONNX Runtime's fit."""
    blocks = blocks.astype(np.float32, copy=False)
    lo, hi = blocks.min(axis=-2), blocks.max(axis=-2)
    outlier = np.where(np.abs(hi) > np.abs(lo), hi, lo) / -(2 ** (bits - 1))
    weight = np.float32(1.0) if importance is None else importance.astype(np.float32)[..., None]
    best, least = outlier, np.full(outlier.shape, np.inf, np.float32)
    for factor in SHRINK:
        scale = outlier * factor
        err = (((_signed_codes(blocks, scale, bits) * scale[..., None, :] - blocks) ** 2) * weight).sum(axis=-2)
        better = err < least
        best, least = np.where(better, scale, best), np.where(better, err, least)
    return best


def _signed_codes(blocks: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """`blocks` [..., B, N] rounded onto `scale` [..., N]: codes -2^(bits-1) .. 2^(bits-1) - 1 (a
    zero scale is an all-zero block, whose codes are 0)."""
    half = 2 ** (bits - 1)
    safe = np.where(scale == 0, np.float32(1.0), scale)[..., None, :]
    return np.clip(np.rint(blocks / safe), -half, half - 1)


def quantize_rtn(weight: np.ndarray, bits: int, block_size: int, symmetric: bool) -> BlockQuant:
    """Round-to-nearest block quantization of W [K, N]: asymmetric by ONNX Runtime's kernels,
    symmetric on `symmetric_scales`."""
    _check(weight.shape[0], bits, block_size)
    if not symmetric:
        return onnxruntime_rtn(weight, bits, block_size, symmetric=False)
    k, n = weight.shape
    blocks = np.asarray(weight, np.float32).reshape(k // block_size, block_size, n)
    scales = symmetric_scales(blocks, bits)  # [K / block, N]
    codes = (_signed_codes(blocks, scales, bits) + 2 ** (bits - 1)).reshape(k, n)
    return from_codes(np.ascontiguousarray(codes.T), np.ascontiguousarray(scales.T), None, bits, block_size)


def onnxruntime_rtn(weight: np.ndarray, bits: int, block_size: int, symmetric: bool) -> BlockQuant:
    """ONNX Runtime's own round-to-nearest fit of W [K, N] (what `MatMulNBitsQuantizer` calls):
    Kiln's asymmetric codes, and the reference its symmetric scale search starts from."""
    _check(weight.shape[0], bits, block_size)
    k, n = weight.shape
    blocks = k // block_size
    packed = np.zeros((n, blocks, block_size * bits // 8), np.uint8)
    zero = np.zeros((n, -(-blocks * bits // 8)), np.uint8)
    scales = np.zeros((n, blocks), np.float32)
    kernel = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    kernel(packed, np.ascontiguousarray(weight, np.float32), scales, zero, block_size, n, k, symmetric)
    return BlockQuant(packed, scales, None if symmetric else zero, bits, block_size)


def from_codes(
    codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, bits: int, block_size: int
) -> BlockQuant:
    """Pack codes [N, K] (0 .. 2^bits - 1), scales [N, K / block] and zeros [N, K / block] (None: symmetric)."""
    n, k = codes.shape
    _check(k, bits, block_size)
    if codes.min() < 0 or codes.max() >= 2**bits:
        raise ValueError(f"codes outside 0..{2**bits - 1}")
    packed = _pack(codes.astype(np.uint8), bits).reshape(n, k // block_size, block_size * bits // 8)
    zp = None if zeros is None else _pack(zeros.astype(np.uint8), bits)
    return BlockQuant(packed, np.ascontiguousarray(scales, np.float32), zp, bits, block_size)


def codes_of(q: BlockQuant) -> np.ndarray:
    """The integer codes [N, K]."""
    return _unpack(q.packed.reshape(q.n, -1), q.bits)


def zeros_of(q: BlockQuant) -> np.ndarray:
    """The zero point of every block [N, K / block]."""
    blocks = q.scales.shape[1]
    if q.zero_points is None:
        return np.full((q.n, blocks), 2 ** (q.bits - 1), np.int32)
    return _unpack(q.zero_points, q.bits)[:, :blocks]


def dequantize(q: BlockQuant) -> np.ndarray:
    """W [K, N] exactly as MatMulNBits reads it (the reference a quantized graph is verified against)."""
    codes = codes_of(q).reshape(q.n, -1, q.block_size).astype(np.float32)
    w = (codes - zeros_of(q)[:, :, None]) * q.scales[:, :, None]
    return np.ascontiguousarray(w.reshape(q.n, q.k).T)


def _check(k: int, bits: int, block_size: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits {bits}: MatMulNBits variants are built at {BITS}")
    if k % block_size:
        raise ValueError(f"input dimension {k} is not a multiple of block_size {block_size}")


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack the last axis, low bits first (a trailing half byte is zero)."""
    if bits == 8:
        return np.ascontiguousarray(values, np.uint8)
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), np.uint8)], axis=-1)
    return np.ascontiguousarray((values[..., 0::2] & 0xF) | ((values[..., 1::2] & 0xF) << 4), np.uint8)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed.astype(np.int32)
    pairs = np.stack([packed & 0xF, packed >> 4], axis=-1)
    return pairs.reshape(*packed.shape[:-1], -1).astype(np.int32)
