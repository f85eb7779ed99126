"""A graph that needs a newer ONNX Runtime than the gateway has is refused, not run wrongly; a
graph with an overridable initializer loads without ONNX Runtime's warning about it."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from service.backends import ort_session


def identity_graph(path: Path, props: dict[str, str]) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    model.opset_import[0].version = 17
    model.ir_version = 9
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def test_a_graph_needing_a_newer_runtime_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = identity_graph(tmp_path / "windowed.onnx", {"kiln.min_onnxruntime": "1.23"})
    assert ort_session.cpu_session(path) is not None  # the installed runtime is new enough
    monkeypatch.setattr(ort, "__version__", "1.22.1")
    with pytest.raises(RuntimeError, match=r"windowed.onnx needs onnxruntime>=1.23; this gateway has 1.22.1"):
        ort_session.cpu_session(path)
    assert ort_session.cpu_session(identity_graph(tmp_path / "plain.onnx", {})) is not None


def test_an_overridable_initializer_loads_without_a_warning(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    bias = helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1])  # an input with a default
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        "g",
        [x, bias],
        [y],
        [helper.make_tensor("bias", TensorProto.FLOAT, [1], [0.5])],
    )
    model = helper.make_model(graph)
    model.opset_import[0].version = 17
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "default.onnx"))
    capfd.readouterr()
    warning_level = ort.SessionOptions()
    warning_level.log_severity_level = 2  # explicit: another test may have quietened the default logger
    ort.InferenceSession(str(tmp_path / "default.onnx"), warning_level, providers=["CPUExecutionProvider"])
    assert "appears in graph inputs" in capfd.readouterr().err  # what ONNX Runtime says at warning level
    session = ort_session.cpu_session(tmp_path / "default.onnx")
    assert "appears in graph inputs" not in capfd.readouterr().err
    assert session.run(None, {"x": [1.0]})[0].tolist() == [1.5]
