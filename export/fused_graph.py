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

Family differences (`DecoderConfig`) are written as initializers or attributes, never as
extra inputs: RoPE scaling lives in the rotary tables, a sliding window is GQA's
`local_window_size` (ONNX Runtime >= 1.23 counts the current token in it, as transformers
does), attention softcaps its `softcap`, (1 + w) norms and the embedding scale are folded
into the weights. Biases, q/k norms, GeGLU and Gemma 2's output norms are a few more nodes.

Graph contract (runner: `service/backends/onnxruntime_lm.py`, `FusedOrtLMRunner`):

    inputs   input_ids              int64  [B, S]
             seqlens_k              int32  [B]      tokens in the row after this call, minus 1
             total_sequence_length  int32  []       max over rows of seqlens_k + 1
             past_key.{i}           f32    [B, KVH, C, D]   C = cache capacity (≥ every row's total)
             past_value.{i}         f32    [B, KVH, C, D]
             logits_from            int64  [1]      optional (default: past the end): first position of logits_all
    outputs  logits                 f32    [B, V]   last position of each row
             logits_all             f32    [B, S - logits_from, V]   every position from logits_from on
                                                    (empty by default; speculative decoding verifies drafts with it)
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
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from export.models.config import DecoderConfig
from export.models.decoder import DecoderLM
from export.models.rope import rope_tables

GRAPH_KIND = "gqa"  # kiln.json `graph` value for files with this contract
LOGITS_FROM = "logits_from"
LOGITS_FROM_NONE = 2**62  # a slice start past any sequence: no position gets logits_all
OPSET = 17
MS_OPSET = 1
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit: larger graphs keep weights beside the file


# ONNX Runtime 1.23 (microsoft/onnxruntime#25927) made GQA's local_window_size count the current
# token, as transformers' sliding_window does; before it the same attribute saw one token more.
WINDOW_MIN_ORT = (1, 23)


def fused_unsupported(cfg: DecoderConfig, ort_version: str = ort.__version__) -> str | None:
    """Why this config has no fused graph (the standard graph still serves it), or None."""
    if cfg.rotary_dim % 16:
        return (
            f"rotary dim {cfg.rotary_dim} (head_dim {cfg.head_dim} x partial_rotary_factor "
            f"{cfg.partial_rotary_factor:g}) is not a multiple of 16, which GroupQueryAttention's rotary needs"
        )
    if cfg.sliding_window and tuple(int(v) for v in ort_version.split(".")[:2]) < WINDOW_MIN_ORT:
        return (
            f"sliding_window {cfg.sliding_window} needs onnxruntime >= 1.23 for GroupQueryAttention's "
            f"local_window_size to mean what transformers' window means (this is {ort_version})"
        )
    return None


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

    def linear(self, x: str, sd: dict[str, np.ndarray], prefix: str, tag: str) -> str:
        """x @ W.T (+ b) for the PyTorch Linear `prefix` (weight stored transposed: [in, out])."""
        (out,) = self.node("MatMul", [x, self.weight(f"{tag}.w", sd[prefix + ".weight"].T)], [f"{tag}.mm"])
        if prefix + ".bias" in sd:
            (out,) = self.node("Add", [out, self.weight(f"{tag}.b", sd[prefix + ".bias"])], [f"{tag}.out"])
        return out


def build_fused_lm_onnx(model: DecoderLM, out_file: Path) -> Path:
    """Write the fused graph of `model` to `out_file` (weights copied from its state dict)."""
    cfg = model.config
    reason = fused_unsupported(cfg)
    if reason:
        raise ValueError(f"no fused graph for this model: {reason}")
    sd = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    b = _Builder()
    kvh, d, h, eps = cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size, float(cfg.rms_norm_eps)

    def norm_weight(key: str) -> np.ndarray:  # Gemma's (1 + w), folded in float32 as it computes it
        return sd[key] + np.float32(1.0) if cfg.norm_unit_offset else sd[key]

    cos, sin = rope_tables(cfg)
    b.weight("rope_cos", cos)
    b.weight("rope_sin", sin)
    embed = sd["embed_tokens.weight"]
    b.weight("embed", embed * np.float32(cfg.embed_scale) if cfg.embed_scale != 1.0 else embed)
    (x,) = b.node("Gather", ["embed", "input_ids"], ["embedded"], axis=0)

    residual = x
    pending: str | None = None  # the sub-block output not yet added to the residual stream
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        ln_in = b.weight(f"{p}ln_in", norm_weight(p + "input_layernorm.weight"))
        if pending is None:
            (normed,) = b.node(
                "SimplifiedLayerNormalization", [residual, ln_in], [f"{p}normed_in"], axis=-1, epsilon=eps
            )
        else:
            normed, residual = _skip_norm(b, pending, residual, ln_in, eps, f"{p}in")
        qkv_inputs = _qkv(b, cfg, sd, normed, p, norm_weight)
        window = cfg.window(i)
        attrs: dict[str, int | float] = {"local_window_size": window} if window else {}
        if cfg.attn_softcap:
            attrs["softcap"] = float(cfg.attn_softcap)
        attn = b.node(
            "GroupQueryAttention",
            [
                *qkv_inputs,
                f"past_key.{i}",
                f"past_value.{i}",
                "seqlens_k",
                "total_sequence_length",
                "rope_cos",
                "rope_sin",
            ],
            [f"{p}attn", f"present_key.{i}", f"present_value.{i}"],
            domain="com.microsoft",
            num_heads=cfg.num_heads,
            kv_num_heads=kvh,
            do_rotary=1,
            rotary_interleaved=0,
            scale=float(cfg.attention_scale),
            **attrs,
        )[0]
        attn_out = b.linear(attn, sd, p + "self_attn.o_proj", f"{p}o")
        if cfg.sandwich_norm:
            attn_out = _norm(b, attn_out, b.weight(f"{p}ln_attn_out", norm_weight(p + "attn_output_norm.weight")), eps)
        ln_post = b.weight(f"{p}ln_post", norm_weight(p + "post_attention_layernorm.weight"))
        normed, residual = _skip_norm(b, attn_out, residual, ln_post, eps, f"{p}post")
        # Gate and up stay two MatMuls: a packed one would need a Split, which copies.
        gate = b.linear(normed, sd, p + "mlp.gate_proj", f"{p}gate")
        up = b.linear(normed, sd, p + "mlp.up_proj", f"{p}up")
        act = _activation(b, cfg.hidden_act, gate, f"{p}act")
        (act,) = b.node("Mul", [act, up], [f"{p}glu"])
        pending = b.linear(act, sd, p + "mlp.down_proj", f"{p}down")
        if cfg.sandwich_norm:
            pending = _norm(b, pending, b.weight(f"{p}ln_mlp_out", norm_weight(p + "mlp_output_norm.weight")), eps)

    assert pending is not None  # the last layer's MLP output
    final, _ = _skip_norm(b, pending, residual, b.weight("ln_final", norm_weight("norm.weight")), eps, "final")
    # Only each row's last position reaches the LM head: index S - 1 along the sequence axis.
    (shape,) = b.node("Shape", ["input_ids"], ["ids_shape"], start=1, end=2)
    (last,) = b.node("Sub", [shape, b.weight("one", np.array([1], np.int64))], ["last_index"])
    (last_hidden,) = b.node("Gather", [final, last], ["last_hidden3"], axis=1)  # [B, 1, H]
    (flat,) = b.node("Reshape", [last_hidden, b.weight("bh", np.array([-1, h], np.int64))], ["last_hidden"])
    # MatMul against [H, V] streams the head faster than Gemm(transB) against [V, H]; a tied
    # head is stored twice for that (once as the embedding table, once transposed).
    head = sd["embed_tokens.weight"] if cfg.tie_word_embeddings else sd["lm_head.weight"]
    head_w = b.weight("lm_head", head.T)
    _lm_head(b, cfg, flat, head_w, "logits")
    # Logits of every position from `logits_from` on, for verifying speculative drafts. The
    # input defaults (an initializer) to a start past any sequence: the slice is empty and the
    # extra head costs nothing unless a caller asks for it.
    b.weight(LOGITS_FROM, np.array([LOGITS_FROM_NONE], np.int64))
    ends = b.weight("logits_to", np.array([LOGITS_FROM_NONE], np.int64))
    (tail,) = b.node("Slice", [final, LOGITS_FROM, ends, b.weight("seq_axis", np.array([1], np.int64))], ["tail"])
    _lm_head(b, cfg, tail, head_w, "logits_all")

    def cache(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", kvh, "capacity", d])

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
    ]
    inputs.append(helper.make_tensor_value_info(LOGITS_FROM, TensorProto.INT64, [1]))  # optional: has a default
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", cfg.vocab_size]),
        helper.make_tensor_value_info("logits_all", TensorProto.FLOAT, ["batch", "tail", cfg.vocab_size]),
    ]
    for i in range(cfg.num_layers):
        inputs += [cache(f"past_key.{i}"), cache(f"past_value.{i}")]
        outputs += [cache(f"present_key.{i}"), cache(f"present_value.{i}")]
    graph = helper.make_graph(b.nodes, "kiln_lm_fused", inputs, outputs, b.initializers)
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", MS_OPSET)],
        producer_name="kiln",
    )
    if cfg.sliding_window:  # the window attribute's meaning depends on the runtime (see WINDOW_MIN_ORT)
        helper.set_model_props(proto, {"kiln.min_onnxruntime": ".".join(map(str, WINDOW_MIN_ORT))})
    out_file.parent.mkdir(parents=True, exist_ok=True)
    external = sum(t.nbytes for t in sd.values()) > EXTERNAL_DATA_BYTES
    onnx.save_model(proto, str(out_file), save_as_external_data=external, location=out_file.name + ".data")
    return out_file


def _lm_head(b: _Builder, cfg: DecoderConfig, hidden: str, head_w: str, out: str) -> None:
    """hidden @ head (Gemma 2: then its final softcap, cap * tanh(x / cap)) -> `out`."""
    if not cfg.final_softcap:
        b.node("MatMul", [hidden, head_w], [out])
        return
    (raw,) = b.node("MatMul", [hidden, head_w], [f"{out}_raw"])
    cap = b.weight(f"{out}_softcap", np.array(cfg.final_softcap, np.float32))
    (scaled,) = b.node("Div", [raw, cap], [f"{out}_capped_in"])
    (tanh,) = b.node("Tanh", [scaled], [f"{out}_capped_tanh"])
    b.node("Mul", [tanh, cap], [out])


def _qkv(b: _Builder, cfg: DecoderConfig, sd: dict[str, np.ndarray], x: str, p: str, norm_weight) -> list[str]:  # type: ignore[no-untyped-def]
    """GQA's query/key/value inputs: one packed MatMul (+ packed bias), or with per-head q/k
    norms (Qwen3) three projections whose q and k are normalised over each head."""
    a = p + "self_attn."
    if not cfg.qk_norm:
        names = [a + n for n in ("q_proj", "k_proj", "v_proj")]
        packed = {".weight": np.concatenate([sd[n + ".weight"] for n in names])}
        if names[0] + ".bias" in sd:
            packed[".bias"] = np.concatenate([sd[n + ".bias"] for n in names])
        return [b.linear(x, {f"{a}qkv{k}": v for k, v in packed.items()}, a + "qkv", f"{p}qkv"), "", ""]
    d, eps = cfg.head_dim, float(cfg.rms_norm_eps)
    heads = b.weight(f"{p}heads_shape", np.array([0, 0, -1, d], np.int64))
    flat = b.weight(f"{p}flat_shape", np.array([0, 0, -1], np.int64))
    out = []
    for name in ("q", "k", "v"):
        y = b.linear(x, sd, f"{a}{name}_proj", f"{p}{name}")
        if name != "v":
            (y4,) = b.node("Reshape", [y, heads], [f"{p}{name}_heads"])
            gamma = b.weight(f"{p}{name}_norm", norm_weight(f"{a}{name}_norm.weight"))
            (y,) = b.node("Reshape", [_norm(b, y4, gamma, eps), flat], [f"{p}{name}_normed"])
        out.append(y)
    return out


def _activation(b: _Builder, act: str, x: str, tag: str) -> str:
    if act == "silu":
        (sig,) = b.node("Sigmoid", [x], [f"{tag}.sig"])
        return b.node("Mul", [x, sig], [f"{tag}.silu"])[0]
    op = "FastGelu" if act == "gelu_tanh" else "Gelu"  # tanh approximation / erf
    return b.node(op, [x], [f"{tag}.gelu"], domain="com.microsoft")[0]


def _norm(b: _Builder, x: str, gamma: str, eps: float) -> str:
    return b.node("SimplifiedLayerNormalization", [x, gamma], [f"{x}.normed"], axis=-1, epsilon=eps)[0]


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
