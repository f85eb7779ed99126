"""The MatMulNBits block format: Kiln's packing is ONNX Runtime's, and ONNX Runtime computes with
exactly the weights `dequantize` returns; GPTQ uses RTN's grid and beats it on correlated inputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.quant import blocks
from export.quant.blocks import codes_of, dequantize, from_codes, quantize_rtn, zeros_of
from export.quant.gptq import gptq_quantize

K, N, BLOCK = 128, 96, 32


def weight(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((K, N)) * 0.05).astype(np.float32)


def matmul_nbits(q, x: np.ndarray, accuracy_level: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    inputs = ["A", "B", "scales"] + ([] if q.zero_points is None else ["zp"])
    inits = [numpy_helper.from_array(q.packed, "B"), numpy_helper.from_array(q.scales, "scales")]
    if q.zero_points is not None:
        inits.append(numpy_helper.from_array(q.zero_points, "zp"))
    attrs = {"K": q.k, "N": q.n, "bits": q.bits, "block_size": q.block_size, "accuracy_level": accuracy_level}
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", q.k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", q.n])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=opsets).SerializeToString())
    return sess.run(None, {"A": x})[0]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_packing_codes_reproduces_onnxruntimes_bytes(bits: int, symmetric: bool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if symmetric:  # the outlier's scale alone is ONNX Runtime's own symmetric fit: the same bytes
        monkeypatch.setattr(blocks, "SHRINK", np.ones(1, np.float32))
        ort_q = blocks.onnxruntime_rtn(weight(), bits, BLOCK, symmetric=True)
        q = quantize_rtn(weight(), bits, BLOCK, True)
        assert np.array_equal(q.packed, ort_q.packed)
        np.testing.assert_array_equal(q.scales, ort_q.scales)
    q = quantize_rtn(weight(), bits, BLOCK, symmetric)
    again = from_codes(codes_of(q), q.scales, None if symmetric else zeros_of(q), bits, BLOCK)
    assert np.array_equal(again.packed, q.packed)
    if not symmetric:
        assert np.array_equal(again.zero_points, q.zero_points)
        # Round to nearest: each weight within half a step of its block's grid.
        step = np.repeat(np.abs(q.scales), BLOCK, axis=1).T
        assert (np.abs(dequantize(q) - weight()) <= step * 0.5 + 1e-6).all()


@pytest.mark.parametrize("bits", [4, 8])
def test_searched_symmetric_scales_never_round_worse_than_the_outliers(bits: int) -> None:
    w = weight(4)
    w[::7, ::5] *= 6.0  # outliers, which the outlier's scale spends the grid on
    blocked = w.reshape(K // BLOCK, BLOCK, N)

    def block_errors(q: blocks.BlockQuant) -> np.ndarray:
        return ((dequantize(q).reshape(K // BLOCK, BLOCK, N) - blocked) ** 2).sum(axis=1)

    err_plain = block_errors(blocks.onnxruntime_rtn(w, bits, BLOCK, symmetric=True))  # the outlier's scale
    err_searched = block_errors(quantize_rtn(w, bits, BLOCK, True))
    assert (err_searched <= err_plain * (1 + 1e-5) + 1e-12).all()
    if bits == 4:  # 16 levels: clipping the outlier pays on many blocks (7% less error here); 256: hardly
        assert err_searched.sum() < 0.95 * err_plain.sum()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matmulnbits_computes_with_the_dequantized_weights(bits: int, symmetric: bool) -> None:
    q = quantize_rtn(weight(), bits, BLOCK, symmetric)
    x = np.random.default_rng(1).standard_normal((5, K)).astype(np.float32)
    want = x @ dequantize(q)
    np.testing.assert_allclose(matmul_nbits(q, x, 0), want, atol=1e-5)  # fp32 compute: exact layout
    served = matmul_nbits(q, x, 4)  # int8 activations: close, and each row alone as in a batch
    assert np.abs(served - want).max() <= 0.02 * np.abs(want).max()
    # A row alone gives that row's answer in the batch, up to the accumulation order: on an AVX2-only
    # CPU ONNX Runtime takes another int8 kernel for one row than for five (1.8e-7 apart), on an
    # AVX-512 VNNI one the same. A row-layout slip would be off by the 2% above, not by 1e-6.
    np.testing.assert_allclose(matmul_nbits(q, x[:1], 4)[0], served[0], rtol=1e-5, atol=1e-6)
    # A wrong layout (codes transposed within each block) is caught by the exact comparison.
    codes = codes_of(q).reshape(N, -1, BLOCK // 2, 2)[..., ::-1].reshape(N, K)
    wrong = from_codes(codes, q.scales, None if symmetric else zeros_of(q), bits, BLOCK)
    assert np.abs(matmul_nbits(wrong, x, 0) - want).max() > 1e-3


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_with_uncorrelated_inputs_is_round_to_nearest(symmetric: bool) -> None:
    """Identity Hessian: nothing to compensate, so GPTQ must land on RTN's codes and grid exactly."""
    rtn = quantize_rtn(weight(), 4, BLOCK, symmetric)
    gptq = gptq_quantize(weight(), torch.eye(K, dtype=torch.float64), 4, BLOCK, symmetric)
    assert np.array_equal(codes_of(gptq), codes_of(rtn))
    np.testing.assert_allclose(gptq.scales, rtn.scales, rtol=1e-6)
    assert np.array_equal(zeros_of(gptq), zeros_of(rtn))


def test_gptq_lowers_the_output_error_on_correlated_inputs() -> None:
    rng = np.random.default_rng(2)
    mix = rng.standard_normal((K, K)) * 0.3 + np.eye(K)
    x = (rng.standard_normal((2048, K)) @ mix).astype(np.float32)  # correlated features
    h = torch.from_numpy(x.T.astype(np.float64) @ x) / len(x)
    w = weight(3)
    err = {}
    for name, q in (("rtn", quantize_rtn(w, 4, BLOCK, False)), ("gptq", gptq_quantize(w, h, 4, BLOCK, False))):
        err[name] = float(np.mean((x @ dequantize(q) - x @ w) ** 2))
    assert err["gptq"] < 0.7 * err["rtn"], err


def test_bad_shapes_and_codes_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of block_size"):
        quantize_rtn(weight()[:100], 4, BLOCK, True)
    with pytest.raises(ValueError, match="bits 3"):
        quantize_rtn(weight(), 3, BLOCK, True)
    with pytest.raises(ValueError, match="codes outside"):
        from_codes(np.full((N, K), 16), np.ones((N, K // BLOCK), np.float32), None, 4, BLOCK)
