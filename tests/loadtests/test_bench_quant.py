"""bench_quant.prepare on an existing quantized export: each backend's step-weight bytes, each graph read once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from loadtests import bench_quant


def matmul_graph(path: Path, columns: int) -> None:
    """A graph whose one MatMul weight is [4, columns] fp32: 16·columns step-weight bytes."""
    weight = numpy_helper.from_array(np.zeros((4, columns), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, columns])],
        [weight],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph), str(path))


def test_step_bytes_per_backend_reading_each_variant_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = tmp_path / "m" / "kiln_quant_repo" / "bench-m"
    matmul_graph(entry / "int8.onnx", 3)
    matmul_graph(entry / "int4.onnx", 5)
    (entry / "kiln.json").write_text(json.dumps({"files": {"int8": "int8.onnx", "int4": "int4.onnx"}}))
    read: list[str] = []
    real = bench_quant.step_weight_bytes
    monkeypatch.setattr(bench_quant, "step_weight_bytes", lambda f: read.append(f.name) or real(f))
    backends = ["kiln-int8", "kiln-int4", "kiln-http-int4"]
    extra = bench_quant.prepare({"name": "m", "hf": "unused"}, tmp_path, 1, backends, print)
    assert extra["step_bytes"] == {"kiln-int8": 48, "kiln-int4": 80, "kiln-http-int4": 80}
    assert extra["kiln_quant_model"] == str(entry)
    assert sorted(read) == ["int4.onnx", "int8.onnx"]  # kiln-int4 and kiln-http-int4 share one read
