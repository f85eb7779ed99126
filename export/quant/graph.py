"""Rewrite the fp32 fused graph onto ONNX Runtime's weight-only quantized operators.

Every MatMul whose weight is named in the plan becomes `MatMulNBits` (com.microsoft); the
embedding Gather becomes `GatherBlockQuantized` followed by a Reshape. The graph contract
(inputs, outputs, the in-place cache) does not change, so `FusedOrtLMRunner` serves the
result as it serves the fp32 graph (kiln.json `graphs`: "gqa").

A tied LM head and the embedding table are the same matrix, and MatMulNBits' layout of the
head, uint8 [V, H / block, block * bits / 8], is the embedding table quantized along H: so
GatherBlockQuantized reads the head's codes directly (3-D data, quantize_axis 2, one block per
row of the last axis) and the file holds that matrix once. Only its scales (and zero points)
are stored twice, in the shapes each operator demands ([V, blocks] vs [V, blocks, 1]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.fused_graph import EXTERNAL_DATA_BYTES
from export.quant.blocks import BlockQuant, zeros_of

EMBED = "embed"  # the fused graph's embedding initializer (export/fused_graph.py)
HEAD = "lm_head"


def fused_weights(fused_file: Path) -> dict[str, np.ndarray]:
    """The fp32 fused graph's MatMul weights [K, N] by initializer name, and the embedding [V, H]."""
    proto = onnx.load(str(fused_file))
    inits = {t.name: t for t in proto.graph.initializer}
    names = [n.input[1] for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    return {name: numpy_helper.to_array(inits[name]) for name in [*names, EMBED]}


def quantize_fused_graph(
    src: Path,
    dst: Path,
    plan: dict[str, BlockQuant],
    embed: BlockQuant,
    accuracy_level: int,
) -> Path:
    """Write `src` with the planned MatMul weights and the embedding quantized.

    `plan` maps MatMul weight names to their quantized form; `embed` is the embedding table's
    (as a [H, V] weight): one holding `plan["lm_head"]`'s packed codes shares them (its scales may
    differ, as Gemma's embedding scale folds into them).
    """
    proto = onnx.load(str(src))
    graph = proto.graph
    hidden = embed.k
    shared = HEAD in plan and embed.packed is plan[HEAD].packed  # a tied head: one copy of the codes
    new_inits: list[onnx.TensorProto] = []
    stored: set[str] = set()

    def store(name: str, array: np.ndarray) -> str:
        if name not in stored:
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
            stored.add(name)
        return name

    def packed_name(name: str, q: BlockQuant) -> str:
        return store(f"{name}.q{q.bits}", q.packed)

    nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in plan:
            name, q = node.input[1], plan[node.input[1]]
            inputs = [node.input[0], packed_name(name, q), store(f"{name}.scales", q.scales)]
            if q.zero_points is not None:
                inputs.append(store(f"{name}.zp", q.zero_points))
            attrs: dict[str, Any] = {"K": q.k, "N": q.n, "bits": q.bits, "block_size": q.block_size}
            if accuracy_level:
                attrs["accuracy_level"] = accuracy_level
            nodes.append(
                helper.make_node("MatMulNBits", inputs, list(node.output), node.name, domain="com.microsoft", **attrs)
            )
            replaced.add(name)
        elif node.op_type == "Gather" and node.input[0] == EMBED:
            data = packed_name(HEAD if shared else EMBED, embed)
            blocks = embed.scales.shape[1]
            inputs = [data, node.input[1], store(f"{EMBED}.scales3", embed.scales.reshape(embed.n, blocks, 1))]
            if embed.zero_points is not None:  # one zero point per (row, block): the last axis is 1 long
                inputs.append(store(f"{EMBED}.zp3", zeros_of(embed).astype(np.uint8).reshape(embed.n, blocks, 1)))
            blocked = f"{node.output[0]}_blocks"
            nodes.append(
                helper.make_node(
                    "GatherBlockQuantized",
                    inputs,
                    [blocked],
                    f"{node.name}_q{embed.bits}",
                    domain="com.microsoft",
                    gather_axis=0,
                    quantize_axis=2,
                    block_size=embed.block_size,
                    bits=embed.bits,
                )
            )
            shape = store(f"{EMBED}.shape", np.array([0, 0, hidden], np.int64))
            nodes.append(helper.make_node("Reshape", [blocked, shape], list(node.output), f"{node.name}_rows"))
            replaced.add(EMBED)
        else:
            nodes.append(node)
    missing = (set(plan) | {EMBED}) - replaced
    if missing:
        raise ValueError(f"{src.name}: no MatMul/Gather reads {sorted(missing)}")

    kept = [t for t in graph.initializer if t.name not in replaced]
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("initializer")
    graph.initializer.extend([*kept, *new_inits])
    return save(proto, dst)


def save(proto: onnx.ModelProto, dst: Path) -> Path:
    """Write `proto`, its weights beside it once they near protobuf's 2 GB limit (as fused_graph does)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    external = sum(t.ByteSize() for t in proto.graph.initializer) > EXTERNAL_DATA_BYTES
    onnx.save_model(proto, str(dst), save_as_external_data=external, location=dst.name + ".data")
    return dst


def with_accuracy_level(src: Path, level: int) -> onnx.ModelProto:
    """`src` with every MatMulNBits' accuracy_level replaced (0: fp32 compute, the exact twin)."""
    proto = onnx.load(str(src))
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            node.ClearField("attribute")
            node.attribute.extend(kept)
            if level:
                node.attribute.append(helper.make_attribute("accuracy_level", level))
    return proto
