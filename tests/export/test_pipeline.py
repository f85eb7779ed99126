"""The export pipeline end to end on tiny models: files, verification, variants, Triton config."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from google.protobuf import text_format

from export import pipeline
from export.checkpoint import load_checkpoint, save_checkpoint
from export.models.llama import LlamaLM
from export.onnx_export import export_lm_onnx
from export.tokenizer import train_tokenizer
from export.verify import VerificationError, verify_lm
from tests.conftest import TINY_TEXT
from tests.models import save_tiny_hf_llama, tiny_llama_config


def _tiny_checkpoint(root, seed: int = 0):  # type: ignore[no-untyped-def]
    tok = train_tokenizer(TINY_TEXT * 3, vocab_size=300)
    torch.manual_seed(seed)
    return save_checkpoint(LlamaLM(tiny_llama_config(tok.get_vocab_size())).eval(), tok, root / "ckpt")


def test_repository_entry_has_the_documented_layout(tiny_lm_repo) -> None:
    entry = tiny_lm_repo / "tiny-lm"
    for rel in (
        "config.pbtxt",
        "1/model.onnx",
        "1/model.fused.onnx",
        "tokenizer.json",
        "kiln.json",
        "export_report.json",
    ):
        assert (entry / rel).is_file(), rel
    manifest = json.loads((entry / "kiln.json").read_text())
    report = json.loads((entry / "export_report.json").read_text())
    assert manifest["kind"] == "text-generation" and manifest["files"] == {
        "fp32": "1/model.onnx",
        "fused": "1/model.fused.onnx",
    }
    assert manifest["graphs"] == {"fp32": "standard", "fused": "gqa"}
    assert manifest["manifest_version"] == 2 and manifest["eos_token_ids"] == [2]
    assert len(manifest["state"]) == 2 and {s["kind"] for s in manifest["state"]} == {"attention_kv"}
    assert report["verification"]["fp32"]["passed"] and report["verification"]["fp32"]["max_abs_logits"] <= 1e-4
    assert set(report["verification"]["fp32"]["phases"]) >= {"prefill", "decode_0", "decode_preallocated"}
    assert report["perplexity"]["fp32"] > 1
    fused = report["verification"]["fused"]
    assert fused["passed"] and fused["max_abs_logits"] <= 1e-4 and fused["max_abs_kv"] <= 1e-4
    assert set(fused["phases"]) == {"prefill", "prefill_chunk_1", "prefill_chunk_2", "decode_0", "decode_1", "decode_2"}
    # Nothing half-written is left beside the entry.
    assert [p.name for p in tiny_lm_repo.iterdir() if p.name.startswith(".")] == []


def test_config_pbtxt_parses_with_tritons_schema_and_matches_the_graph(tiny_lm_repo) -> None:
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    entry = tiny_lm_repo / "tiny-lm"
    cfg = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    graph = onnx.load(str(entry / "1/model.onnx"))
    assert cfg.name == "tiny-lm" and cfg.platform == "onnxruntime_onnx"
    assert [i.name for i in cfg.input] == [i.name for i in graph.graph.input]
    assert [o.name for o in cfg.output] == [o.name for o in graph.graph.output]
    for spec, value in zip(cfg.input, graph.graph.input, strict=True):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        assert list(spec.dims) == dims


def test_variants_are_verified_and_their_cost_is_measured(tmp_path) -> None:
    ckpt = _tiny_checkpoint(tmp_path)
    report = pipeline.export_checkpoint(
        ckpt, tmp_path / "repo", "m", variants=True, val_texts=TINY_TEXT, calib_texts=TINY_TEXT
    )
    assert set(report["verification"]) == {"fp32", "fused", "optimized", "int8", "int4"}
    assert report["verification"]["optimized"]["max_abs_logits"] <= 1e-4
    # int8/int4: exact against their dequantized weights (tests/export/quant/), not against fp32.
    assert report["verification"]["int4"]["max_abs_logits"] <= 1e-4
    assert set(report["perplexity"]) == {"fp32", "optimized", "fused", "int8", "int4"}
    assert abs(report["perplexity"]["optimized"] / report["perplexity"]["fp32"] - 1) < 1e-3
    assert report["perplexity"]["int4"] != report["perplexity"]["fused"]  # measured, not assumed
    assert "int8_perplexity_increase_pct" in report and "int4_perplexity_increase_pct" in report
    manifest = json.loads((tmp_path / "repo/m/kiln.json").read_text())
    assert set(manifest["files"]) == {"fp32", "fused", "optimized", "int8", "int4"}
    assert all((tmp_path / "repo/m" / f).is_file() for f in manifest["files"].values())


def test_verification_catches_a_graph_that_disagrees(tmp_path) -> None:
    ckpt = load_checkpoint(_tiny_checkpoint(tmp_path))
    onnx_file = export_lm_onnx(ckpt.model, tmp_path / "m.onnx")
    assert verify_lm(ckpt.model, onnx_file)["passed"]
    with torch.no_grad():
        ckpt.model.layers[0].mlp.up_proj.weight.add_(1e-2)  # the graph no longer matches the model
    with pytest.raises(VerificationError, match="exceeds"):
        verify_lm(ckpt.model, onnx_file)


def test_a_failed_export_leaves_the_previous_entry_untouched(tmp_path, monkeypatch) -> None:
    ckpt = _tiny_checkpoint(tmp_path)
    repo = tmp_path / "repo"
    pipeline.export_checkpoint(ckpt, repo, "m", variants=False, val_texts=TINY_TEXT)
    before = (repo / "m/1/model.onnx").read_bytes()

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise VerificationError("simulated mismatch")

    monkeypatch.setattr(pipeline, "verify_lm", broken)
    with pytest.raises(VerificationError):
        pipeline.export_checkpoint(
            _tiny_checkpoint(tmp_path / "other", seed=5), repo, "m", variants=False, val_texts=TINY_TEXT
        )
    assert (repo / "m/1/model.onnx").read_bytes() == before
    assert sorted(p.name for p in repo.iterdir()) == ["m"]


def test_a_hugging_face_llama_directory_exports(tmp_path) -> None:
    tok = train_tokenizer(TINY_TEXT * 3, vocab_size=300)
    save_tiny_hf_llama(tmp_path / "hf", tok)
    report = pipeline.export_checkpoint(tmp_path / "hf", tmp_path / "repo", "hf", variants=False, val_texts=TINY_TEXT)
    assert report["source"] == "huggingface" and report["verification"]["fp32"]["passed"]
    arch = json.loads((tmp_path / "repo/hf/kiln.json").read_text())["architecture"]
    assert (arch["num_heads"], arch["num_kv_heads"], arch["head_dim"]) == (6, 2, 16)
