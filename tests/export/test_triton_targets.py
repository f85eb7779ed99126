"""Triton repository entries and the TensorRT builder, without a server or a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from google.protobuf import text_format

from export import tensorrt
from export.triton_repo import Tensor, lm_python_config, model_config

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def parse(text: str):  # type: ignore[no-untyped-def]
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_lm_python_config_is_decoupled_and_parses() -> None:
    cfg = parse(lm_python_config("m-triton", {"KILN_MAX_BATCH": "4"}))
    assert cfg.backend == "python" and cfg.model_transaction_policy.decoupled and cfg.max_batch_size == 0
    assert cfg.parameters["KILN_MAX_BATCH"].string_value == "4"
    assert [i.name for i in cfg.input if not i.optional] == ["INPUT_IDS", "MAX_NEW_TOKENS"]


def test_generic_config_covers_a_batched_classifier_and_a_tensorrt_plan() -> None:
    """What the vision path needs: onnxruntime_onnx with dynamic batching, and tensorrt_plan."""
    inputs = [Tensor("pixel_values", "TYPE_FP32", (3, 224, 224))]
    outputs = [Tensor("logits", "TYPE_FP32", (10,))]
    cfg = parse(
        model_config(
            "clf",
            inputs,
            outputs,
            platform="onnxruntime_onnx",
            max_batch_size=32,
            count=2,
            dynamic_batching_delay_us=2000,
            preferred_batch_sizes=[8, 16],
        )
    )
    assert cfg.max_batch_size == 32 and list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
    assert cfg.instance_group[0].count == 2
    plan = parse(model_config("clf-trt", inputs, outputs, platform="tensorrt_plan", kind="KIND_GPU", max_batch_size=32))
    assert plan.platform == "tensorrt_plan" and plan.instance_group[0].kind == plan.instance_group[0].KIND_GPU
    with pytest.raises(ValueError):
        model_config("x", inputs, outputs)


@pytest.mark.skipif(tensorrt.unavailable_reason() is None, reason="TensorRT and a CUDA GPU are present here")
def test_tensorrt_build_skips_with_the_reason_without_tensorrt_or_cuda(tmp_path) -> None:
    reason = tensorrt.unavailable_reason()
    assert reason and ("tensorrt" in reason or "CUDA" in reason)
    with pytest.raises(tensorrt.TensorRTUnavailable, match="tensorrt|CUDA"):
        tensorrt.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", profiles=[])
    cfg = type("Cfg", (), {"num_layers": 1, "num_kv_heads": 1, "head_dim": 4, "vocab_size": 8})()
    cfg.max_position_embeddings = 32
    report = tensorrt.build_lm_engine(tmp_path / "m.onnx", tmp_path / "m.plan", cfg)
    assert report == {"skipped": reason}
    assert not (tmp_path / "m.plan").exists()


@pytest.mark.slow
@pytest.mark.skipif(tensorrt.unavailable_reason() is None, reason="TensorRT and a CUDA GPU are present here")
def test_kiln_export_tensorrt_says_why_it_skipped(tmp_path) -> None:
    from tests.export.test_pipeline import _tiny_checkpoint

    ckpt = _tiny_checkpoint(tmp_path)
    cmd = [sys.executable, "-m", "cli", "export", "--checkpoint", str(ckpt), "--repository", str(tmp_path)]
    out = subprocess.run([*cmd, "--name", "m", "--fp32-only", "--tensorrt"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "TensorRT engine skipped:" in out.stderr
    report = json.loads((tmp_path / "m/export_report.json").read_text())
    assert report["tensorrt"]["skipped"] == tensorrt.unavailable_reason()
    assert not (tmp_path / "m/1/model.plan").exists()


@pytest.mark.gpu
@pytest.mark.skipif(tensorrt.unavailable_reason() is not None, reason=f"{tensorrt.unavailable_reason()}")
def test_tensorrt_engine_matches_onnxruntime(tmp_path) -> None:
    from export.checkpoint import load_checkpoint
    from export.onnx_export import export_lm_onnx
    from tests.export.test_pipeline import _tiny_checkpoint

    ckpt = load_checkpoint(_tiny_checkpoint(tmp_path))
    onnx_file = export_lm_onnx(ckpt.model, tmp_path / "m.onnx")
    for fp16 in (False, True):
        report = tensorrt.build_lm_engine(onnx_file, tmp_path / f"m{int(fp16)}.plan", ckpt.config, fp16=fp16)
        assert report["verification"]["max_abs_logits"] <= report["verification"]["tolerance"]
