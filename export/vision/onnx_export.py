"""Classifier → ONNX with a dynamic batch axis, verified against PyTorch on every export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from contracts.vision import PreprocessContract
from export.verify import VerificationError

OPSET = 17


def export_classifier_onnx(model: nn.Module, contract: PreprocessContract, out_file: Path) -> Path:
    out_file.parent.mkdir(parents=True, exist_ok=True)
    h, w = contract.input_size
    example = torch.randn(2, 3, h, w)
    with torch.no_grad():
        torch.onnx.export(
            model.eval(),
            (example,),
            str(out_file),
            input_names=[contract.input_name],
            output_names=[contract.output_name],
            dynamic_axes={contract.input_name: {0: "batch"}, contract.output_name: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(out_file))
    return out_file


def verify_classifier(
    model: nn.Module,
    onnx_file: Path,
    contract: PreprocessContract,
    tolerance: float = 1e-4,
    batch_sizes: tuple[int, ...] = (1, 3, 20),
    seed: int = 0,
    raise_on_fail: bool = True,
) -> dict:
    """max |Δlogits| between PyTorch and ONNX Runtime, per batch size (the batch axis must be
    dynamic) and per optimization level (none, and the full optimization the gateway runs)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = contract.input_size
    levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    phases: dict[str, float] = {}
    for level_name, level in levels.items():
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        sess = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        for b in batch_sizes:
            x = torch.randn(b, 3, h, w, generator=gen)
            with torch.no_grad():
                ref = model(x).numpy()
            got = sess.run([contract.output_name], {contract.input_name: x.numpy()})[0]
            if got.shape != ref.shape:
                raise VerificationError(f"{onnx_file.name}: batch {b} gave shape {got.shape}, expected {ref.shape}")
            phases[f"{level_name}/batch_{b}"] = float(np.max(np.abs(got - ref)))
    worst = max(phases.values())
    report = {"tolerance": tolerance, "max_abs_logits": worst, "passed": worst <= tolerance, "phases": phases}
    if raise_on_fail and worst > tolerance:
        raise VerificationError(f"{onnx_file.name}: max |Δlogits| {worst:.3g} exceeds {tolerance:g}: {phases}")
    return report
