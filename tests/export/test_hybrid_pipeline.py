"""`kiln export` for Mamba / hybrid checkpoints: loading, refusals, verification and the manifest."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from contracts.manifest import TextManifest
from export import pipeline
from export.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from export.hybrid_pipeline import state_bytes
from tests.conftest import TINY_TEXT
from tests.ssm_models import save_hf_mamba, tiny_hybrid


def test_hf_mamba_export_is_verified_against_transformers(hf_mamba_entry) -> None:  # type: ignore[no-untyped-def]
    report = json.loads((hf_mamba_entry / "export_report.json").read_text())
    assert report["source"] == "huggingface"
    hf = report["verification"]["transformers"]
    assert hf["passed"] and hf["max_abs"] <= 1e-4 and "MambaForCausalLM" in hf["reference"]
    assert set(hf["phases"]) == {"prefill", *(f"decode_{i}" for i in range(6))}
    assert report["verification"]["fp32"]["passed"]
    assert report["perplexity"]["fp32"] > 1


def test_hf_mamba2_exports_and_matches_transformers(tmp_path, hf_mamba2_dir) -> None:  # type: ignore[no-untyped-def]
    report = pipeline.export_checkpoint(hf_mamba2_dir, tmp_path / "repo", "m2", val_texts=TINY_TEXT)
    assert report["verification"]["transformers"]["passed"]
    assert "Mamba2ForCausalLM" in report["verification"]["transformers"]["reference"]
    manifest = json.loads((tmp_path / "repo/m2/kiln.json").read_text())
    assert manifest["eos_token_ids"] == [2]
    assert manifest["state"][0] == {"kind": "recurrent", "tensors": {"conv.0": [64 + 2 * 2 * 8, 3], "ssm.0": [8, 8, 8]}}


def test_manifest_declares_per_slot_state_and_the_graph_contract(hybrid_entry) -> None:  # type: ignore[no-untyped-def]
    raw = json.loads((hybrid_entry / "kiln.json").read_text())
    assert raw["manifest_version"] == 2 and raw["kind"] == "text-generation"
    assert raw["graphs"] == {"fp32": "hybrid"}
    assert raw["files"] == {"fp32": "1/model.onnx"} and raw["decode_files"] == {"fp32": "1/model.decode.onnx"}
    assert raw["state"] == [
        {"kind": "recurrent", "tensors": {"conv.0": [64, 3], "ssm.0": [64, 8]}},
        {"kind": "attention_kv", "tensors": {"key.1": [2, "positions", 8], "value.1": [2, "positions", 8]}},
        {"kind": "recurrent", "tensors": {"conv.2": [64 + 2 * 2 * 8, 3], "ssm.2": [4, 16, 8]}},
        {"kind": "recurrent", "tensors": {"conv.3": [64, 3], "ssm.3": [64, 8]}},
    ]
    manifest = TextManifest.read(hybrid_entry)  # the contracts package reads it back
    assert manifest.graph("fused").contract == "hybrid" and manifest.num_layers == 4
    arch = manifest.architecture
    assert arch["layers"] == ["mamba", "attention", "mamba2", "mamba"]
    recurrent = 4 * (64 * 3 + 64 * 8 + 96 * 3 + 4 * 16 * 8 + 64 * 3 + 64 * 8)
    assert arch["state_bytes"] == {"recurrent_per_slot": recurrent, "attention_kv_per_position": 4 * 2 * 2 * 8}
    for files in (manifest.files, manifest.decode_files):
        graph = onnx.load(str(manifest.path(files["fp32"]))).graph
        assert [i.name for i in graph.input] == arch["inputs"]
        assert [o.name for o in graph.output] == arch["outputs"]
    names = [f"past_{n}" for layer in manifest.state for n in layer.tensors]
    assert arch["inputs"] == ["input_ids", "position_ids", "attention_mask", *names]
    report = json.loads((hybrid_entry / "export_report.json").read_text())
    assert report["source"] == "kiln" and "transformers" not in report["verification"]
    assert report["verification"]["fp32"]["passed"]


def test_kiln_hybrid_checkpoint_round_trips(tmp_path, ssm_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = tiny_hybrid("mamba2,attention", norm="layernorm", positions="learned")
    save_checkpoint(model, ssm_tokenizer, tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert loaded.source == "kiln" and loaded.config == model.config
    ids = torch.randint(3, 300, (1, 9))
    with torch.no_grad():
        assert torch.equal(model.logits_full(ids), loaded.model.logits_full(ids))
    assert state_bytes(loaded.model) == state_bytes(model)


def _edit_config(path, **changes) -> None:  # type: ignore[no-untyped-def]
    raw = json.loads((path / "config.json").read_text())
    raw.update(changes)
    (path / "config.json").write_text(json.dumps(raw))


def test_unsupported_mamba_checkpoints_are_refused_with_the_reason(tmp_path, ssm_tokenizer) -> None:  # type: ignore[no-untyped-def]
    path = save_hf_mamba(tmp_path / "m1", ssm_tokenizer, version=1)
    _edit_config(path, hidden_act="gelu")
    with pytest.raises(CheckpointError, match="hidden_act='gelu'"):
        load_checkpoint(path)
    _edit_config(path, hidden_act="silu", model_type="falcon_mamba")
    with pytest.raises(CheckpointError, match="falcon_mamba.*mixer_rms_eps"):
        load_checkpoint(path)
    path2 = save_hf_mamba(tmp_path / "m2", ssm_tokenizer, version=2)
    _edit_config(path2, time_step_limit=[0.0, 0.1])
    with pytest.raises(CheckpointError, match="time_step_limit"):
        load_checkpoint(path2)
    _edit_config(path, model_type="kiln-hybrid", layers="mamba,rwkv")
    with pytest.raises(CheckpointError, match="layers='mamba,rwkv'"):
        load_checkpoint(path)


def test_targets_the_hybrid_runtime_cannot_serve_are_refused(tmp_path, hybrid_checkpoint) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="TensorRT"):
        pipeline.export_checkpoint(hybrid_checkpoint, tmp_path, "x", val_texts=TINY_TEXT, tensorrt=True)
    assert not (tmp_path / "x").exists()
