"""`HybridLM` → ONNX: the "hybrid" graph contract (manifest `graphs: {<variant>: "hybrid"}`).

Two graphs share the contract: `model.onnx` takes any number of new tokens S (prefill, chunked
prefill, mixed prefill + decode batches): Mamba-1 layers run their recurrence as one ONNX
`Loop` over the tokens, Mamba-2 layers in the parallel SSD form (no loop, O(S²) per head).
`model.decode.onnx` is the same network traced for S = 1, with the recurrence as a single
step and no loop (the decode hot path); it accepts only S = 1.

Layers are numbered 0..L-1 in pattern order; layer i contributes either recurrent state
(Mamba, Mamba-2) or attention KV, never both. All state tensors are float32. Shapes per layer
come from the manifest's `state` entry (Mamba-2: conv [B, d_inner + 2·G·N, k-1], ssm
[B, H, head_dim, N]); the table shows Mamba-1.

    inputs   input_ids        int64  [B, S]            S = 1 in the decode graph
             position_ids     int64  [B, S]            absolute positions (rotary, or learned: then
                                                       < max_position_embeddings); always an input,
                                                       ignored when positions = "none"
             attention_mask   int64  [B, P + S]        P = the KV length fed to the attention layers
                                                       (0 for a model without attention layers).
                                                       Past part: 1 = valid cache column. New part
                                                       (last S columns): 1 = real token, 0 = padding;
                                                       a row's real tokens come first (right padding)
             past_conv.{i}    f32    [B, d_inner, k-1]  Mamba layer i: last k-1 conv inputs
             past_ssm.{i}     f32    [B, d_inner, N]    Mamba layer i: selective-scan state h
             past_key.{i}     f32    [B, KVH, P, D]     attention layer i (as the standard Llama graph)
             past_value.{i}   f32    [B, KVH, P, D]
    outputs  logits           f32    [B, S, V]
             present_conv.{i} f32    [B, d_inner, k-1]  the state after the row's real tokens
             present_ssm.{i}  f32    [B, d_inner, N]
             new_key.{i}      f32    [B, KVH, S, D]     the new tokens' keys (RoPE applied) / values;
             new_value.{i}    f32    [B, KVH, S, D]     the runner writes the real ones into its cache

Semantics. A row with L real tokens (L = sum of its last S mask columns) advances its recurrent
state by exactly those L tokens (padded positions do not move it), so the result equals the
row run alone over its real tokens, and a row with L = 0 (idle in this call) gets its state
back bit for bit. Logits and new K/V at padded
positions are meaningless. Chunked prefill is a sequence of calls, each starting from the
state the previous one returned. Attention follows the standard contract: causal within the
new block, the mask across the past. The state is per row and fixed-size: a runner keeps one
buffer per tensor shaped [max_batch, *shape] from the manifest's `state` entry ("positions"
= the KV capacity) and may move rows between calls (the graph never sees slot indices).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from contracts.manifest import HYBRID
from export.models.hybrid import HybridLM, HybridOnnxWrapper
from export.onnx_export import OPSET

GRAPH_KIND = HYBRID  # the manifest's `graphs` value for these files
_OUT = {"recurrent": "present", "attention_kv": "new"}


def state_io(model: HybridLM) -> list[tuple[str, str, str]]:
    """(kind, input name, output name) of every state tensor, in layer order."""
    return [
        (entry["kind"], f"past_{name}", f"{_OUT[entry['kind']]}_{name}")
        for entry in model.state_spec()
        for name in entry["tensors"]
    ]


def input_names(model: HybridLM) -> list[str]:
    return ["input_ids", "position_ids", "attention_mask", *(i for _, i, _ in state_io(model))]


def output_names(model: HybridLM) -> list[str]:
    return ["logits", *(o for _, _, o in state_io(model))]


def _example_state(model: HybridLM, batch: int, past: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    flat = []
    for entry in model.state_spec():
        for shape in entry["tensors"].values():
            dims = [batch, *(past if d == "positions" else d for d in shape)]
            flat.append(torch.randn(dims, generator=gen) * 0.1)
    return flat


def export_hybrid_onnx(model: HybridLM, out_file: Path, decode: bool = False) -> Path:
    """Trace the prefill graph (any S, recurrence as a Loop) or the decode graph (S = 1)."""
    cfg = model.config
    out_file.parent.mkdir(parents=True, exist_ok=True)
    batch, seq, past = 2, 1 if decode else 3, 2
    ids = torch.randint(3, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(past, past + seq).unsqueeze(0).expand(batch, seq).contiguous()
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    flat = _example_state(model, batch, past)
    seq_axis = {} if decode else {1: "seq"}
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", **seq_axis},
        "position_ids": {0: "batch", **seq_axis},
        "attention_mask": {0: "batch", 1: "total"},
        "logits": {0: "batch", **seq_axis},
    }
    for kind, i_name, o_name in state_io(model):
        if kind == "attention_kv":
            axes[i_name] = {0: "batch", 2: "past"}
            axes[o_name] = {0: "batch", **({} if decode else {2: "seq"})}
        else:
            axes[i_name] = axes[o_name] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # The decode graph is traced through the single-step branch on purpose (S = 1).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            HybridOnnxWrapper(model.eval()),
            (ids, pos, mask, *flat),
            str(out_file),
            input_names=input_names(model),
            output_names=output_names(model),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    _fix_signature(out_file, model, decode)
    onnx.checker.check_model(str(out_file))
    return out_file


def _fix_signature(out_file: Path, model: HybridLM, decode: bool) -> None:
    """Make the file's signature say exactly what the contract says.

    The exporter drops inputs the network never reads (position_ids without positions) and
    leaves some output dims as generated names; put back the input and write the documented
    shapes, so a runner can allocate from the graph as well as from the manifest.
    """
    cfg = model.config
    graph = onnx.load(str(out_file))
    seq: int | str = 1 if decode else "seq"
    if "position_ids" not in {i.name for i in graph.graph.input}:
        graph.graph.input.insert(
            1, onnx.helper.make_tensor_value_info("position_ids", onnx.TensorProto.INT64, ["batch", seq])
        )
    missing = [name for name in input_names(model) if name not in {i.name for i in graph.graph.input}]
    if missing:
        raise RuntimeError(f"{out_file.name}: the exporter dropped inputs {missing}")
    shapes: dict[str, list] = {"logits": ["batch", seq, cfg.vocab_size]}
    for entry in model.state_spec():
        for name, shape in entry["tensors"].items():
            if entry["kind"] == "recurrent":
                shapes[f"present_{name}"] = ["batch", *shape]
            else:
                shapes[f"new_{name}"] = ["batch", shape[0], seq, shape[2]]
    for value in graph.graph.output:
        dims = value.type.tensor_type.shape.dim
        for dim, want in zip(dims, shapes[value.name], strict=True):
            if isinstance(want, int):
                dim.dim_value = want
            else:
                dim.dim_param = want
    onnx.save(graph, str(out_file))
