"""bench_quant.prepare on existing quantized exports: each backend's step-weight bytes, each graph
read once, and an export made with other quantization settings made again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.quant.config import QuantConfig
from loadtests import bench_quant

INF = float("inf")


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


def fake_export(entry: Path, int4_columns: int, head_bits: int) -> None:
    """An export's files as prepare reads them, its report saying which settings made it."""
    matmul_graph(entry / "int8.onnx", 3)
    matmul_graph(entry / "int4.onnx", int4_columns)
    (entry / "kiln.json").write_text(json.dumps({"files": {"int8": "int8.onnx", "int4": "int4.onnx"}}))
    settings = QuantConfig(head_bits=head_bits, int8_budget_pct=INF, int4_budget_pct=INF, calibration_tokens=2048)
    (entry / "export_report.json").write_text(json.dumps({"quantization": {"config": settings.to_dict()}}))


def test_step_bytes_per_backend_reading_each_variant_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = tmp_path / "m" / "kiln_quant_repo" / "bench-m"
    fake_export(entry, 5, head_bits=QuantConfig().head_bits)
    read: list[str] = []
    real = bench_quant.step_weight_bytes
    monkeypatch.setattr(bench_quant, "step_weight_bytes", lambda f: read.append(f.name) or real(f))
    backends = ["kiln-int8", "kiln-int4", "kiln-http-int4"]
    extra = bench_quant.prepare({"name": "m", "hf": "unused"}, tmp_path, 1, backends, print)
    assert extra["step_bytes"] == {"kiln-int8": 48, "kiln-int4": 80, "kiln-http-int4": 80}
    assert extra["kiln_quant_model"] == str(entry)
    assert sorted(read) == ["int4.onnx", "int8.onnx"]  # kiln-int4 and kiln-http-int4 share one read


def test_the_8_bit_head_case_has_its_own_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_export(tmp_path / "m" / "kiln_quant_repo" / "bench-m", 5, head_bits=4)
    head8 = tmp_path / "m" / "kiln_head8_repo" / "bench-m"
    fake_export(head8, 2, head_bits=4)  # made with other settings: must be exported again
    made: list[tuple[Path, int]] = []

    def export_checkpoint(hf, repo, name, quant, **kw):  # type: ignore[no-untyped-def]
        made.append((repo, quant.head_bits))
        fake_export(repo / name, 4, quant.head_bits)

    monkeypatch.setattr("export.pipeline.export_checkpoint", export_checkpoint)
    backends = ["kiln-int4", bench_quant.HEAD8]
    extra = bench_quant.prepare({"name": "m", "hf": "unused"}, tmp_path, 1, backends, print)
    assert made == [(head8.parent, 8)]  # the default (4-bit head) export was kept, the stale one redone
    assert extra["kiln_head8_model"] == str(head8)
    assert (extra["step_bytes"]["kiln-int4"], extra["step_bytes"][bench_quant.HEAD8]) == (80, 64)
    again = bench_quant.prepare({"name": "m", "hf": "unused"}, tmp_path, 1, backends, print)
    assert made == [(head8.parent, 8)] and again == extra  # kept between runs once made
