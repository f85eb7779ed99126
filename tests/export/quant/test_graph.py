"""The fused graph rewritten onto MatMulNBits / GatherBlockQuantized: shape, sharing, and exactness
against a PyTorch model holding the dequantized weights, with the fused-graph cache semantics."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from export.checkpoint import load_checkpoint
from export.fused_graph import build_fused_lm_onnx
from export.quant.config import QuantConfig
from export.quant.graph import EMBED, HEAD, fused_weights, quantize_fused_graph, with_accuracy_level
from export.quant.variants import dequantized_model, plan_weights, verify_quantized
from export.verify import VerificationError, verify_fused_lm
from tests.export.test_checkpoint import _hf_llama_dir, tokenizer  # noqa: F401 - fixture

CFG = QuantConfig()


def quantized(tmp_path, tokenizer, tie: bool, bits: int, head_bits: int):  # type: ignore[no-untyped-def]  # noqa: F811
    _hf_llama_dir(tmp_path / "hf", tokenizer, tie)
    model = load_checkpoint(tmp_path / "hf").model
    fused = build_fused_lm_onnx(model, tmp_path / "fused.onnx")
    weights = fused_weights(fused)
    projections = [n for n in weights if n not in (HEAD, EMBED)]
    plan, embed = plan_weights(weights, projections, {}, bits, "rtn", head_bits, model.config, CFG)
    out = quantize_fused_graph(fused, tmp_path / "q.onnx", plan, embed, CFG.accuracy_level)
    return model, fused, out, plan, embed


@pytest.mark.parametrize(("tie", "bits", "head_bits"), [(True, 4, 8), (True, 4, 4), (False, 4, 8), (False, 8, 8)])
def test_every_projection_and_the_embedding_are_quantized(tmp_path, tokenizer, tie, bits, head_bits) -> None:  # noqa: F811
    model, fused, out, plan, embed = quantized(tmp_path, tokenizer, tie, bits, head_bits)
    graph = onnx.load(str(out)).graph
    ops = Counter(n.op_type for n in graph.node)
    layers = model.config.num_layers
    # every projection, plus the head twice: the last position's logits and logits_all (speculation)
    assert ops["MatMulNBits"] == 5 * layers + 2 and ops["MatMul"] == 0
    assert ops["GatherBlockQuantized"] == 1 and ops["GroupQueryAttention"] == layers
    nbits = {n.input[1]: {a.name: a.i for a in n.attribute} for n in graph.node if n.op_type == "MatMulNBits"}
    assert {a["bits"] for name, a in nbits.items() if "lm_head" not in name} == {bits}
    assert nbits[f"{HEAD}.q{head_bits}"]["bits"] == head_bits and nbits[f"{HEAD}.q{head_bits}"]["accuracy_level"] == 4
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    names = {t.name for t in graph.initializer}
    assert EMBED not in names and HEAD not in names  # no fp32 copy left
    if tie:  # the head's codes are the embedding table's: stored once
        assert gather.input[0] == f"{HEAD}.q{head_bits}" and embed is plan[HEAD]
    else:
        assert gather.input[0] == f"{EMBED}.q{head_bits}"
    assert out.stat().st_size < (0.4 if bits == 4 else 0.5) * fused.stat().st_size


@pytest.mark.parametrize("tie", [False, True])
def test_the_exact_twin_matches_the_dequantized_model_and_the_served_graph_is_close(tmp_path, tokenizer, tie) -> None:  # noqa: F811
    model, _, out, plan, embed = quantized(tmp_path, tokenizer, tie, 4, 8)
    reference = dequantized_model(model, plan, embed)
    report = verify_quantized(reference, out, tmp_path, 1e-4, CFG)
    assert report["exact"]["passed"] and report["exact"]["max_abs_logits"] <= 1e-4
    assert set(report["exact"]["phases"]) == {
        "prefill",
        "prefill_chunk_1",
        "prefill_chunk_2",
        "decode_0",
        "decode_1",
        "decode_2",
    }
    served = report["served"]
    assert served["passed"] and 0 < served["max_abs_logits"] <= CFG.served_rtol * served["logit_scale"]
    # The original fp32 model is not what the graph computes: the exact check tells them apart.
    twin = tmp_path / "twin.onnx"
    onnx.save_model(with_accuracy_level(out, 0), str(twin))
    with pytest.raises(VerificationError):
        verify_fused_lm(model, twin, 1e-4)
    # ... and so is a reference one quantization step off in a single weight.
    with torch.no_grad():
        step = float(np.abs(plan["layers.0.down.w"].scales).max())
        reference.layers[0].mlp.down_proj.weight[0, 0] += step
    with pytest.raises(VerificationError):
        verify_fused_lm(reference, twin, 1e-4)
