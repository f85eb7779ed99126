"""The classifier repository entry: verified ONNX, contract, calibration, Triton config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.verify import VerificationError
from export.vision.checkpoint import load_vision_checkpoint
from export.vision.onnx_export import verify_classifier


@pytest.fixture(scope="module")
def entry(tiny_vision_repo: Path) -> Path:
    return tiny_vision_repo / "tiny-vit"


def test_layout_and_manifest(entry: Path) -> None:
    files = ("config.pbtxt", "labels.txt", "1/model.onnx", "views.onnx", "preprocess.json", "calibration.json")
    for f in (*files, "kiln.json"):
        assert (entry / f).is_file(), f
    manifest = json.loads((entry / "kiln.json").read_text())
    assert manifest["kind"] == "image-classification"
    assert manifest["preprocess"] == "preprocess.json" and manifest["calibration"] == "calibration.json"
    assert manifest["views"] == "views.onnx"
    assert (entry / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    assert not list(entry.parent.glob(".tiny-vit*")), "staging directory left behind"


def test_preprocess_contract(entry: Path) -> None:
    c = json.loads((entry / "preprocess.json").read_text())
    assert c["input_size"] == [16, 16] and c["layout"] == "NCHW" and c["resize"] == "bilinear"
    assert len(c["mean"]) == len(c["std"]) == 3 and all(s > 0 for s in c["std"])
    assert c["labels"] == [str(i) for i in range(10)]


def test_onnx_has_a_dynamic_batch_and_verification_passed(entry: Path) -> None:
    report = json.loads((entry / "export_report.json").read_text())
    v = report["verification"]
    assert v["passed"] and v["max_abs_logits"] <= 1e-4 and v["tolerance"] == 1e-4
    assert {"disabled/batch_1", "all/batch_20"} <= set(v["phases"])
    sess = ort.InferenceSession(str(entry / "1/model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    for b in (1, 7, 33):
        assert sess.run(None, {"pixel_values": np.zeros((b, 3, 16, 16), np.float32)})[0].shape == (b, 10)


def test_verification_fails_loudly_when_the_graph_disagrees(entry: Path, tiny_vision_repo: Path) -> None:
    ckpt = load_vision_checkpoint(tiny_vision_repo.parent / "checkpoints" / "tiny-vit")
    with torch.no_grad():
        ckpt.model.head.bias.add_(1e-2)  # PyTorch now differs from the exported graph
    with pytest.raises(VerificationError, match="exceeds"):
        verify_classifier(ckpt.model, entry / "1/model.onnx", ckpt.contract)


def test_calibration_and_report(entry: Path) -> None:
    cal = json.loads((entry / "calibration.json").read_text())
    assert cal["calibration_version"] == 2
    assert set(cal["pipelines"]) == {"single", "multi", "multi_flip"}
    assert cal["conformal"]["method"] == "lac" and cal["conformal"]["alpha"] == pytest.approx(0.1)
    assert cal["conformal"]["k_reg"] >= 1 and cal["conformal"]["lambda"] > 0
    for p in cal["pipelines"].values():
        assert set(p["calibrators"]) == {"none", "temperature", "vector", "dirichlet", "isotonic", "beta"}
        assert 0.02 <= p["calibrators"]["temperature"]["temperature"] <= 50
        # The default is the validation-NLL winner, and the file says so.
        scores = p["selection"]["scores"]
        assert p["default"] == min(scores, key=scores.get) and p["selection"]["metric"] == "nll"
        assert len(p["holdout"]["labels"]) == len(p["holdout"]["probs"]) == p["selection"]["validation_images"]
        assert sum(p["reference"]["class_counts"]) == len(p["reference"]["confidences"]) == 48
    report = json.loads((entry / "export_report.json").read_text())
    assert report["views_graph"]["passed"] and report["views_graph"]["max_abs"] == 0
    for r in report["calibration"]["pipelines"].values():
        assert set(r["ece_test"]) == {"before", "after"}
        assert 0 <= r["conformal"]["coverage"] <= 1 and 1 <= r["conformal"]["mean_set_size"] <= 10


def test_triton_config_parses_with_dynamic_batching(entry: Path) -> None:
    cfg = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == "tiny-vit" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 64
    assert list(cfg.dynamic_batching.preferred_batch_size) == [20, 40, 60]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.instance_group[0].count == 1
    assert list(cfg.input[0].dims) == [3, 16, 16] and cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(cfg.output[0].dims) == [10] and cfg.output[0].label_filename == "labels.txt"
