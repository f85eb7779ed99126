"""The fused decoder graph: ONNX Runtime's contrib operators instead of spelled-out attention.

`onnx_export.py` traces the PyTorch model into standard ONNX, which every runtime reads
(Triton's onnxruntime backend, TensorRT) but which runs attention, rotary embedding and the
RMSNorms as several hundred small kernels per decode step. Serving on ONNX Runtime's CPU
provider does better with the graph written directly from the weights, a few dozen kernels
per step:

- `GroupQueryAttention` (com.microsoft) per layer, with rotary embedding inside and the KV
  cache updated *in place*: the past and present tensors of each layer are bound to the same
  buffer, so the engine never writes new keys/values itself;
- one packed Q/K/V MatMul per layer (the gate and up projections stay apart: splitting a
  packed result would copy it);
- `SkipSimplifiedLayerNormalization` (residual add + RMSNorm in one kernel);
- logits only for the last position of each row (prefill chunks skip the LM head elsewhere).

Graph contract (runner: `service/backends/onnxruntime_lm.py`, `FusedOrtLMRunner`):

    inputs   input_ids              int64  [B, S]
             seqlens_k              int32  [B]      tokens in the row after this call, minus 1
             total_sequence_length  int32  []       max over rows of seqlens_k + 1
             past_key.{i}           f32    [B, KVH, C, D]   C = cache capacity (≥ every row's total)
             past_value.{i}         f32    [B, KVH, C, D]
    outputs  logits                 f32    [B, V]   last position of each row
             present_key.{i}        f32    [B, KVH, C, D]   bound to the past buffer: updated in place
             present_value.{i}      f32    [B, KVH, C, D]

Each row's new tokens sit at positions seqlens_k + 1 - S ... seqlens_k (rotary position and
cache column alike), so a row may hold a prompt chunk on top of its cached prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from export.models.llama import LlamaLM

GRAPH_KIND = "gqa"  # kiln.json `graph` value for files with this contract
OPSET = 17
MS_OPSET = 1
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit: larger graphs keep weights beside the file


def rope_tables(max_positions: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [max_positions, head_dim / 2], the same frequencies as `rope_cos_sin`."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    freqs = np.arange(max_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any) -> list[str]:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(self.nodes)}", domain=domain, **attrs))
        return outputs


def build_fused_lm_onnx(model: LlamaLM, out_file: Path) -> Path:
    """Write the fused graph of `model` to `out_file` (weights copied from its state dict)."""
    cfg = model.config
    sd = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    b = _Builder()
    nh, kvh, d, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    eps = float(cfg.rms_norm_eps)

    cos, sin = rope_tables(cfg.max_position_embeddings, d, cfg.rope_theta)
    b.weight("rope_cos", cos)
    b.weight("rope_sin", sin)
    b.weight("embed", sd["embed_tokens.weight"])
    (x,) = b.node("Gather", ["embed", "input_ids"], ["embedded"], axis=0)

    residual = x
    pending: str | None = None  # the sub-block output not yet added to the residual stream
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        ln_in = b.weight(f"{p}ln_in", sd[p + "input_layernorm.weight"])
        if pending is None:
            (normed,) = b.node(
                "SimplifiedLayerNormalization", [residual, ln_in], [f"{p}normed_in"], axis=-1, epsilon=eps
            )
        else:
            normed, residual = _skip_norm(b, pending, residual, ln_in, eps, f"{p}in")
        qkv_w = np.concatenate(
            [sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"], sd[p + "self_attn.v_proj.weight"]]
        ).T
        (qkv,) = b.node("MatMul", [normed, b.weight(f"{p}qkv", qkv_w)], [f"{p}qkv_out"])
        attn = b.node(
            "GroupQueryAttention",
            [
                qkv,
                "",
                "",
                f"past_key.{i}",
                f"past_value.{i}",
                "seqlens_k",
                "total_sequence_length",
                "rope_cos",
                "rope_sin",
            ],
            [f"{p}attn", f"present_key.{i}", f"present_value.{i}"],
            domain="com.microsoft",
            num_heads=nh,
            kv_num_heads=kvh,
            do_rotary=1,
            rotary_interleaved=0,
            scale=float(1.0 / np.sqrt(d)),
        )[0]
        o_w = b.weight(f"{p}o", sd[p + "self_attn.o_proj.weight"].T)
        (attn_out,) = b.node("MatMul", [attn, o_w], [f"{p}attn_out"])
        ln_post = b.weight(f"{p}ln_post", sd[p + "post_attention_layernorm.weight"])
        normed, residual = _skip_norm(b, attn_out, residual, ln_post, eps, f"{p}post")
        # Gate and up stay two MatMuls: a packed one would need a Split, which copies.
        gate_w = b.weight(f"{p}gate", sd[p + "mlp.gate_proj.weight"].T)
        up_w = b.weight(f"{p}up", sd[p + "mlp.up_proj.weight"].T)
        (gate,) = b.node("MatMul", [normed, gate_w], [f"{p}gate_out"])
        (up,) = b.node("MatMul", [normed, up_w], [f"{p}up_out"])
        (sig,) = b.node("Sigmoid", [gate], [f"{p}sig"])
        (silu,) = b.node("Mul", [gate, sig], [f"{p}silu"])
        (act,) = b.node("Mul", [silu, up], [f"{p}act"])
        down_w = b.weight(f"{p}down", sd[p + "mlp.down_proj.weight"].T)
        (pending,) = b.node("MatMul", [act, down_w], [f"{p}mlp_out"])

    assert pending is not None  # the last layer's MLP output
    final, _ = _skip_norm(b, pending, residual, b.weight("ln_final", sd["norm.weight"]), eps, "final")
    # Only each row's last position reaches the LM head: index S - 1 along the sequence axis.
    (shape,) = b.node("Shape", ["input_ids"], ["ids_shape"], start=1, end=2)
    (last,) = b.node("Sub", [shape, b.weight("one", np.array([1], np.int64))], ["last_index"])
    (last_hidden,) = b.node("Gather", [final, last], ["last_hidden3"], axis=1)  # [B, 1, H]
    (flat,) = b.node("Reshape", [last_hidden, b.weight("bh", np.array([-1, h], np.int64))], ["last_hidden"])
    # MatMul against [H, V] streams the head faster than Gemm(transB) against [V, H]; a tied
    # head is stored twice for that (once as the embedding table, once transposed).
    head = sd["embed_tokens.weight"] if cfg.tie_word_embeddings else sd["lm_head.weight"]
    b.node("MatMul", [flat, b.weight("lm_head", head.T)], ["logits"])

    def cache(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", kvh, "capacity", d])

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", cfg.vocab_size])]
    for i in range(cfg.num_layers):
        inputs += [cache(f"past_key.{i}"), cache(f"past_value.{i}")]
        outputs += [cache(f"present_key.{i}"), cache(f"present_value.{i}")]
    graph = helper.make_graph(b.nodes, "kiln_lm_fused", inputs, outputs, b.initializers)
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", MS_OPSET)],
        producer_name="kiln",
    )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    external = sum(t.nbytes for t in sd.values()) > EXTERNAL_DATA_BYTES
    onnx.save_model(proto, str(out_file), save_as_external_data=external, location=out_file.name + ".data")
    return out_file


def _skip_norm(b: _Builder, x: str, residual: str, gamma: str, eps: float, tag: str) -> tuple[str, str]:
    """residual + x, then RMSNorm, in one kernel; returns (normalised, new residual)."""
    normed, _, _, summed = b.node(
        "SkipSimplifiedLayerNormalization",
        [x, residual, gamma],
        [f"{tag}_normed", "", "", f"{tag}_residual"],
        domain="com.microsoft",
        epsilon=eps,
    )
    return normed, summed
