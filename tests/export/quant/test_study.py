"""The quantization study flags a weight a quantizer collapsed to one code, and the page neither
ranks such a run nor hides it (ONNX Runtime's GPTQ zeroed the demo LM's head on one machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.quant.docs import _study
from export.quant.study import collapsed_weights


def nbits_graph(path: Path, weights: dict[str, np.ndarray]) -> None:
    nodes = [
        helper.make_node("MatMulNBits", ["x", name, f"{name}.scales"], [f"y.{name}"], domain="com.microsoft", K=32, N=2)
        for name in weights
    ]
    inits = [numpy_helper.from_array(w, name) for name, w in weights.items()]
    inits += [numpy_helper.from_array(np.ones((2, 1), np.float32), f"{name}.scales") for name in weights]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])
    outs = [helper.make_tensor_value_info(f"y.{name}", TensorProto.FLOAT, [1, 2]) for name in weights]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], outs, inits)), str(path))


def test_a_weight_of_one_repeated_code_is_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    varied = rng.integers(0, 256, (2, 1, 16), dtype=np.uint8)
    nbits_graph(tmp_path / "g.onnx", {"w.ok": varied, "w.dead": np.full((2, 1, 16), 0x88, np.uint8)})
    assert collapsed_weights(tmp_path / "g.onnx") == ["w.dead"]


def row(kl: float, collapsed: list[str] | None = None) -> dict:
    return {"description": "d", "size_bytes": 2**20, "perplexity": 10.0, "increase_pct": 1.0, "mean_kl": kl,
            "top1_agreement": 0.9, "collapsed": collapsed or []}  # fmt: skip


def test_the_page_marks_a_collapsed_run_and_ranks_only_working_ones() -> None:
    study = {"candidates": {"kiln-gptq": row(0.02), "ort-hqq": row(0.01), "ort-gptq": row(0.001, ["head.q4"])}}
    study["candidates"]["fp32"] = row(0.0)
    text = "\n".join(_study(study))
    assert "**failed in this run**" in next(line for line in text.splitlines() if line.startswith("| ort-gptq"))
    assert "**failed" not in next(line for line in text.splitlines() if line.startswith("| ort-hqq"))
    assert "2.00× that of the best of ONNX Runtime's quantizer runs that worked (ort-hqq)" in text
