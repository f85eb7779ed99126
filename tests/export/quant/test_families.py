"""Every Hugging Face family with a fused graph quantizes onto MatMulNBits and matches its
dequantized weights exactly: packed and separate q/k/v (Qwen3's q/k norms), biases, Gemma's
scaled and tied embedding, softcaps and windows."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from export.checkpoint import load_checkpoint
from export.fused_graph import build_fused_lm_onnx, fused_unsupported
from export.quant.config import QuantConfig
from export.quant.gptq import calibration_windows, collect_hessians
from export.quant.graph import EMBED, HEAD, fused_weights, quantize_fused_graph
from export.quant.variants import dequantized_model, plan_weights, verify_quantized
from tests.conftest import TINY_TEXT
from tests.families import FAMILIES

CFG = QuantConfig()


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_family_quantizes_and_matches_its_dequantized_weights(family_zoo, tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    ckpt = load_checkpoint(family_zoo.checkpoint(name))
    model, cfg = ckpt.model, ckpt.config
    if fused_unsupported(cfg):
        pytest.skip(f"{name}: no fused graph ({fused_unsupported(cfg)})")
    fused = build_fused_lm_onnx(model, tmp_path / "fused.onnx")
    weights = fused_weights(fused)
    projections = [n for n in weights if n not in (HEAD, EMBED)]
    calib = calibration_windows(ckpt.tokenizer, TINY_TEXT, cfg.bos_token_id, 64, 256)
    hessians = collect_hessians(model, calib, projections)
    plan, embed = plan_weights(weights, projections, hessians, 4, "gptq", 8, cfg, CFG)
    out = quantize_fused_graph(fused, tmp_path / "int4.onnx", plan, embed, CFG.accuracy_level)
    graph = onnx.load(str(out)).graph
    ops = Counter(n.op_type for n in graph.node)
    head_matmuls = sum(n.op_type == "MatMul" and n.input[1] == HEAD for n in onnx.load(str(fused)).graph.node)
    assert head_matmuls == 2  # the last position's logits and logits_all (speculative verification)
    assert ops["MatMul"] == 0 and ops["MatMulNBits"] == len(projections) + head_matmuls
    assert ops["GatherBlockQuantized"] == 1
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    assert (gather.input[0] == f"{HEAD}.q8") == cfg.tie_word_embeddings  # a tied head shares its codes
    report = verify_quantized(dequantized_model(model, plan, embed), out, tmp_path, 1e-4, CFG)
    assert report["exact"]["passed"] and report["served"]["passed"], report
