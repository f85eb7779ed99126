"""The "hybrid" ONNX graphs: the documented contract, verification, and that verification bites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import hybrid_graph
from export.hybrid_graph import export_hybrid_onnx, input_names, output_names
from export.models import mamba
from export.verify import VerificationError
from export.verify_hybrid import verify_hybrid
from tests.ssm_models import tiny_hybrid

PATTERNS = [
    ("mamba,mamba", {"positions": "none"}),
    ("mamba,attention,mamba2,mamba", {}),
    ("attention,mamba", {"positions": "learned", "norm": "layernorm"}),
]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, tuple]:  # type: ignore[no-untyped-def]
    out = {}
    for layers, extra in PATTERNS:
        model = tiny_hybrid(layers, **extra)
        root = tmp_path_factory.mktemp(layers.replace(",", "-"))
        out[layers] = (
            model,
            export_hybrid_onnx(model, root / "model.onnx"),
            export_hybrid_onnx(model, root / "model.decode.onnx", decode=True),
        )
    return out


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("layers", [p for p, _ in PATTERNS])
def test_graphs_match_pytorch_and_rows_run_alone(graphs, layers) -> None:  # type: ignore[no-untyped-def]
    model, prefill, decode = graphs[layers]
    report = verify_hybrid(model, prefill, decode)
    assert report["passed"] and report["max_abs"] <= 1e-4
    assert report["max_abs_recurrent_state_value"] > 0.05  # states that matter were compared
    phases = report["phases"]
    assert {"prefill_chunk_2", "mixed_prefill_decode", "decode_idle_row"} <= set(phases)
    assert all(ph["max_abs_alone_logits"] <= 1e-4 and ph["max_abs_alone_state"] <= 1e-4 for ph in phases.values())


def test_the_graph_contract_names_and_shapes(graphs) -> None:  # type: ignore[no-untyped-def]
    model, prefill, decode = graphs["mamba,attention,mamba2,mamba"]
    assert input_names(model) == [
        "input_ids",
        "position_ids",
        "attention_mask",
        "past_conv.0",
        "past_ssm.0",
        "past_key.1",
        "past_value.1",
        "past_conv.2",
        "past_ssm.2",
        "past_conv.3",
        "past_ssm.3",
    ]
    assert output_names(model)[:5] == ["logits", "present_conv.0", "present_ssm.0", "new_key.1", "new_value.1"]
    d_inner = 2 * 32
    for path, seq in ((prefill, "seq"), (decode, 1)):
        g = onnx.load(str(path)).graph
        assert [i.name for i in g.input] == input_names(model)
        assert [o.name for o in g.output] == output_names(model)
        ins = {i.name: i for i in g.input}
        outs = {o.name: o for o in g.output}
        assert _dims(ins["input_ids"]) == ["batch", seq]
        assert _dims(ins["attention_mask"]) == ["batch", "total"]
        assert _dims(ins["past_conv.0"]) == _dims(outs["present_conv.0"]) == ["batch", d_inner, 3]
        assert _dims(ins["past_ssm.0"]) == ["batch", d_inner, 8]
        assert _dims(ins["past_ssm.2"]) == ["batch", 4, d_inner // 4, 8]  # Mamba-2: [heads, head_dim, N]
        assert _dims(ins["past_key.1"]) == ["batch", 2, "past", 8]
        assert _dims(outs["new_key.1"]) == ["batch", 2, seq, 8]
        assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for n, i in ins.items() if "." in n)
        has_loop = any(n.op_type == "Loop" for n in g.node)
        assert has_loop == (seq == "seq")  # decode: one step, no loop


def test_a_model_without_positions_still_takes_position_ids(graphs) -> None:  # type: ignore[no-untyped-def]
    model, prefill, _ = graphs["mamba,mamba"]
    sess = ort.InferenceSession(str(prefill), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()][:3] == ["input_ids", "position_ids", "attention_mask"]


def test_recurrent_state_size_does_not_depend_on_the_number_of_tokens(graphs) -> None:  # type: ignore[no-untyped-def]
    model, prefill, _ = graphs["mamba,mamba"]
    sess = ort.InferenceSession(str(prefill), providers=["CPUExecutionProvider"])
    sizes = []
    for n in (2, 60):
        feeds = {
            "input_ids": np.full((1, n), 5, np.int64),
            "position_ids": np.arange(n)[None],
            "attention_mask": np.ones((1, n), np.int64),
        }
        for entry in model.state_spec():
            for name, shape in entry["tensors"].items():
                feeds[f"past_{name}"] = np.zeros([1, *shape], np.float32)
        outs = dict(zip(output_names(model), sess.run(None, feeds), strict=True))
        sizes.append({k: v.nbytes for k, v in outs.items() if k.startswith("present_")})
    assert sizes[0] == sizes[1] and sum(sizes[0].values()) == 2 * 4 * (64 * 3 + 64 * 8)


def test_verification_catches_a_graph_that_disagrees(graphs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, prefill, decode = graphs["mamba,mamba"]
    changed = tiny_hybrid("mamba,mamba", positions="none")
    with torch.no_grad():
        changed.backbone.layers[1].mixer.A_log.add_(0.05)
    with pytest.raises(VerificationError, match="exceeds"):
        verify_hybrid(changed, prefill, decode)


def test_verification_catches_a_graph_whose_padding_moves_the_state(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_hybrid("mamba,mamba", positions="none")
    original = mamba.MambaMixer.forward

    def ignores_padding(self, u, valid, conv, ssm):  # type: ignore[no-untyped-def]
        return original(self, u, torch.ones_like(valid), conv, ssm)

    monkeypatch.setattr(mamba.MambaMixer, "forward", ignores_padding)
    prefill = export_hybrid_onnx(model, tmp_path / "p.onnx")
    decode = export_hybrid_onnx(model, tmp_path / "d.onnx", decode=True)
    monkeypatch.setattr(mamba.MambaMixer, "forward", original)
    with pytest.raises(VerificationError):
        verify_hybrid(model, prefill, decode)


def test_graph_kind_is_the_manifest_name() -> None:
    assert hybrid_graph.GRAPH_KIND == "hybrid"
    assert Path(hybrid_graph.__file__).read_text().count("present_conv.{i}") >= 1  # documented contract
