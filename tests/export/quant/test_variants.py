"""`kiln export` with variants: the int8/int4 fused graphs, their verification and quality report,
greedy tokens through the fused runner, and an export that fails its perplexity budget."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest

from contracts.manifest import TextManifest
from export.pipeline import export_checkpoint
from export.quant.config import QuantConfig
from export.quant.quality import QuantBudgetError
from service.backends.onnxruntime_lm import make_runner
from service.backends.ort_fused import FusedRunner
from tests.conftest import TINY_TEXT, fused_greedy_by_recompute

PROMPT = [1, 40, 41, 42, 43, 44, 45]


def entry_of(repo):  # type: ignore[no-untyped-def]
    entry = repo / "tiny-lm"
    return entry, json.loads((entry / "kiln.json").read_text()), json.loads((entry / "export_report.json").read_text())


def test_int8_and_int4_are_fused_graphs_on_matmulnbits(tiny_quant_lm_repo) -> None:
    entry, manifest, report = entry_of(tiny_quant_lm_repo)
    assert manifest["files"]["int8"] == "1/model.int8.onnx" and manifest["files"]["int4"] == "1/model.int4.onnx"
    assert {k: manifest["graphs"][k] for k in ("fused", "int8", "int4")} == {
        "fused": "gqa",
        "int8": "gqa",
        "int4": "gqa",
    }
    made = report["quantization"]["variants"]
    assert (made["int4"]["algorithm"], made["int4"]["bits"], made["int4"]["head_bits"]) == ("gptq", 4, 4)
    assert (made["int8"]["algorithm"], made["int8"]["bits"], made["int8"]["head_bits"]) == ("rtn", 8, 8)
    layers = len(manifest["state"])
    for variant in ("int8", "int4"):
        ops = Counter(n.op_type for n in onnx.load(str(entry / manifest["files"][variant])).graph.node)
        # every projection, plus the head twice: the last position's logits and logits_all (speculation)
    assert ops["MatMulNBits"] == 5 * layers + 2 and ops["MatMul"] == 0 and ops["GatherBlockQuantized"] == 1
    sizes = report["size_bytes"]
    assert sizes["int4"] < sizes["int8"] < 0.5 * sizes["fused"]


def test_every_quantized_graph_is_verified_and_measured(tiny_quant_lm_repo) -> None:
    _, _, report = entry_of(tiny_quant_lm_repo)
    quant = report["quantization"]
    assert set(quant["variants"]) == {"int8", "int4", "int4-rtn"}  # the RTN baseline: measured, not kept
    assert not quant["variants"]["int4-rtn"]["served"] and quant["variants"]["int4-rtn"]["file"] is None
    for variant, info in quant["variants"].items():
        exact, served = info["verification"]["exact"], info["verification"]["served"]
        assert exact["passed"] and exact["max_abs_logits"] <= 1e-4 and exact["max_abs_kv"] <= 1e-4, variant
        assert served["passed"] and served["tolerance"] == pytest.approx(0.05 * served["logit_scale"]), variant
        assert info["tied_embedding_shared"]  # the tiny LM ties its head: one copy of that matrix
    assert quant["calibration"]["texts"] == "calib_texts" and quant["calibration"]["tokens"] > 0
    assert set(quant["quality"]) == {"fp32", "int8", "int4", "int4-rtn"}
    for variant in ("int8", "int4"):
        q = quant["quality"][variant]
        assert q["mean_kl"] > 0 and 0 < q["top1_agreement"] <= 1
        assert report["perplexity"][variant] == q["perplexity"]
        assert quant["budget"][variant]["passed"]
        assert report[f"{variant}_perplexity_increase_pct"] == quant["budget"][variant]["increase_pct"]
    assert report["perplexity"]["fused"] == pytest.approx(report["perplexity"]["fp32"], rel=1e-5)


@pytest.mark.parametrize("variant", ["int4", "int8"])
def test_the_fused_runner_serves_the_quantized_graph_greedily(tiny_quant_lm_repo, variant: str) -> None:
    manifest = TextManifest.read(tiny_quant_lm_repo / "tiny-lm")
    graph = manifest.graph(variant)
    assert graph.contract == "gqa" and graph.path.name == f"model.{variant}.onnx"
    runner = make_runner(manifest, variant, max_batch=2, max_seq_len=64, threads=1)
    assert type(runner) is FusedRunner
    logits = runner.prefill(0, PROMPT)
    tokens = []
    for _ in range(16):
        tokens.append(int(np.argmax(logits)))
        logits = runner.decode(np.array([tokens[-1]]))[0]
    assert tokens == fused_greedy_by_recompute(graph.path, PROMPT, 16)


def test_an_export_over_its_perplexity_budget_fails_and_writes_nothing(tiny_quant_lm_repo, tmp_path) -> None:
    _, _, report = entry_of(tiny_quant_lm_repo)
    cost = report["int4_perplexity_increase_pct"]
    # Random weights: quantization noise moves perplexity measurably, either way; a budget under
    # what it moved fails the export.
    assert abs(cost) > 1e-3
    ckpt = tiny_quant_lm_repo.parent / "checkpoints" / "tiny-lm"
    repo = tmp_path / "repo"
    with pytest.raises(QuantBudgetError, match=r"int4 perplexity .* \(budget \+[0-9.e-]+%, --int4-ppl-budget"):
        export_checkpoint(
            ckpt,
            repo,
            "tiny-lm",
            val_texts=TINY_TEXT,
            calib_texts=TINY_TEXT,
            quant=QuantConfig(int4_budget_pct=cost - abs(cost) / 2),
        )
    assert not repo.exists() or list(repo.iterdir()) == []
