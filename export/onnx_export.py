"""PyTorch `DecoderLM` → ONNX with the KV cache as explicit graph inputs and outputs.

One graph serves both phases: prefill is a call with an empty past (P = 0) and many tokens,
decode a call with S = 1 over the engine's cache. Batch, sequence, past and total lengths are
all dynamic axes. The TorchScript exporter is used because it handles a zero-length past
axis without specialising it away.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import onnxruntime as ort
import torch

from export.models.decoder import DecoderLM, OnnxWrapper

if TYPE_CHECKING:
    from export.checkpoint import Checkpoint

OPSET = 17


def toolchain_versions() -> dict[str, str]:
    """What an export report records about the tools that produced and checked the graph."""
    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }


def new_report(name: str, ckpt: Checkpoint, checkpoint: str | Path, architecture: str | None = None) -> dict:
    """The text-generation export report before any graph is built: what was exported, from
    where, and with which tools; the stages fill `verification`, `perplexity`, `size_bytes` and
    `timings_s`. The key order is the order `export_report.json` shows."""
    report: dict = {"name": name, "kind": "text-generation"}
    if architecture is not None:
        report["architecture"] = architecture
    report.update(
        checkpoint=str(checkpoint),
        source=ckpt.source,
        parameters=sum(p.numel() for p in ckpt.model.parameters()),
        config=ckpt.model.config.__dict__,
        verification={},
        perplexity={},
        size_bytes={},
        timings_s={},
        versions=toolchain_versions(),
    )
    return report


def input_names(num_layers: int) -> list[str]:
    names = ["input_ids", "position_ids", "attention_mask"]
    for i in range(num_layers):
        names += [f"past_key.{i}", f"past_value.{i}"]
    return names


def output_names(num_layers: int) -> list[str]:
    names = ["logits"]
    for i in range(num_layers):
        names += [f"new_key.{i}", f"new_value.{i}"]
    return names


def export_lm_onnx(model: DecoderLM, out_file: Path) -> Path:
    cfg = model.config
    out_file.parent.mkdir(parents=True, exist_ok=True)
    batch, seq, past = 2, 3, 2
    ids = torch.randint(3, cfg.vocab_size, (batch, seq))
    pos = torch.arange(past, past + seq).unsqueeze(0).expand(batch, seq).contiguous()
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    kv = torch.zeros(batch, cfg.num_kv_heads, past, cfg.head_dim)
    flat_past = [kv.clone() for _ in range(2 * cfg.num_layers)]

    dynamic_axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"},
        "position_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total"},
        "logits": {0: "batch", 1: "seq"},
    }
    for i in range(cfg.num_layers):
        for kind in ("key", "value"):
            dynamic_axes[f"past_{kind}.{i}"] = {0: "batch", 2: "past"}
            dynamic_axes[f"new_{kind}.{i}"] = {0: "batch", 2: "seq"}

    with torch.no_grad():
        torch.onnx.export(
            OnnxWrapper(model.eval()),
            (ids, pos, mask, *flat_past),
            str(out_file),
            input_names=input_names(cfg.num_layers),
            output_names=output_names(cfg.num_layers),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(out_file))
    return out_file
