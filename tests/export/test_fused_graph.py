"""The fused (GroupQueryAttention) graph: parity with transformers, its verifier, and its shape."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from export.checkpoint import load_checkpoint
from export.fused_graph import build_fused_lm_onnx
from export.verify import VerificationError, _fused_call, _session, verify_fused_lm
from tests.export.test_checkpoint import _hf_llama_dir, tokenizer  # noqa: F401 - fixture


@pytest.mark.parametrize("tie", [False, True])
def test_fused_graph_with_in_place_cache_matches_transformers(tmp_path, tokenizer, tie) -> None:  # noqa: F811
    """Prefill 10 tokens of two rows, then decode the rest one token at a time, the cache
    updated in place by the kernel: every step's logits equal transformers' to 1e-4."""
    hf = _hf_llama_dir(tmp_path / "hf", tokenizer, tie)
    ckpt = load_checkpoint(tmp_path / "hf")
    onnx_file = build_fused_lm_onnx(ckpt.model, tmp_path / "fused.onnx")
    from export.verify import _session

    sess = _session(onnx_file)
    cfg = ckpt.config
    ids = torch.randint(3, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits.numpy()
    cache = [np.full((2, cfg.num_kv_heads, 32, cfg.head_dim), 7.0, np.float32) for _ in range(2 * cfg.num_layers)]
    got = _fused_call(sess, ids[:, :10].numpy(), np.array([9, 9]), cache)
    assert np.abs(got - expected[:, 9]).max() < 1e-4
    for t in range(10, 17):
        got = _fused_call(sess, ids[:, t : t + 1].numpy(), np.array([t, t]), cache)
        assert np.abs(got - expected[:, t]).max() < 1e-4, t
    # Columns past the sequences were never touched (the kernel writes only its own positions).
    assert all((buf[:, :, 17:] == 7.0).all() for buf in cache)


def test_verifier_catches_a_graph_that_disagrees(tmp_path, tokenizer) -> None:  # noqa: F811
    _hf_llama_dir(tmp_path / "hf", tokenizer)
    model = load_checkpoint(tmp_path / "hf").model
    onnx_file = build_fused_lm_onnx(model, tmp_path / "fused.onnx")
    assert verify_fused_lm(model, onnx_file)["passed"]
    with torch.no_grad():
        model.layers[1].self_attn.k_proj.weight[0, 0] += 0.5  # the graph now disagrees with the model
    with pytest.raises(VerificationError, match="fused.onnx"):
        verify_fused_lm(model, onnx_file)


def test_fused_graph_is_a_few_kernels_per_layer(tmp_path, tokenizer) -> None:  # noqa: F811
    _hf_llama_dir(tmp_path / "hf", tokenizer)
    model = load_checkpoint(tmp_path / "hf").model
    graph = onnx.load(str(build_fused_lm_onnx(model, tmp_path / "fused.onnx"))).graph
    ops = Counter(node.op_type for node in graph.node)
    layers = model.config.num_layers
    assert ops["GroupQueryAttention"] == layers
    # QKV, output, gate, up, down; the LM head of the last position and of logits_all (empty unless asked)
    assert ops["MatMul"] == 5 * layers + 2
    assert ops["Softmax"] == 0 and ops["Concat"] == 0
    assert len(graph.node) <= 12 * layers + 10


def test_a_config_gqa_cannot_run_gets_the_standard_graph_only(tmp_path) -> None:
    """head_dim 8: GroupQueryAttention's rotary needs a multiple of 16, so no fused graph; the
    manifest lists only the standard one (which the runner then serves)."""
    from export.checkpoint import save_checkpoint
    from export.models.llama import LlamaConfig, LlamaLM
    from export.pipeline import export_checkpoint
    from export.tokenizer import train_tokenizer
    from tests.conftest import TINY_TEXT

    tok = train_tokenizer(TINY_TEXT * 3, vocab_size=300)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2)
    ckpt = save_checkpoint(LlamaLM(cfg).eval(), tok, tmp_path / "ckpt")
    report = export_checkpoint(ckpt, tmp_path / "repo", "m", variants=False, val_texts=TINY_TEXT)
    assert "rotary dim 8" in report["fused_skipped"] and set(report["verification"]) == {"fp32"}
    manifest = json.loads((tmp_path / "repo/m/kiln.json").read_text())
    assert manifest["files"] == {"fp32": "1/model.onnx"} and "fused" not in manifest["graphs"]


def test_windowed_fused_graph_needs_the_runtime_that_counts_windows_like_transformers() -> None:
    from export.fused_graph import fused_unsupported
    from export.models.config import DecoderConfig

    cfg = DecoderConfig(hidden_size=64, num_heads=4, num_kv_heads=2, sliding_window=8)
    assert fused_unsupported(cfg, "1.32.0") is None
    assert "onnxruntime >= 1.23" in fused_unsupported(cfg, "1.22.1")
    assert fused_unsupported(DecoderConfig(hidden_size=64, num_heads=4, num_kv_heads=2), "1.22.1") is None


def test_logits_all_gives_every_position_when_asked_and_nothing_by_default(tmp_path, tokenizer) -> None:  # noqa: F811
    """Speculative decoding verifies drafts with `logits_all`: from `logits_from` on, every
    position's logits equal transformers'; by default the output is empty."""
    hf = _hf_llama_dir(tmp_path / "hf", tokenizer)
    ckpt = load_checkpoint(tmp_path / "hf")
    sess = _session(build_fused_lm_onnx(ckpt.model, tmp_path / "fused.onnx"))
    cfg = ckpt.config
    ids = torch.randint(3, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(ids).logits.numpy()
    cache = [np.zeros((1, cfg.num_kv_heads, 16, cfg.head_dim), np.float32) for _ in range(2 * cfg.num_layers)]

    def call(tokens: np.ndarray, seqlen: int, start: int | None) -> tuple[np.ndarray, np.ndarray]:
        b = sess.io_binding()
        b.bind_cpu_input("input_ids", tokens)
        b.bind_cpu_input("seqlens_k", np.array([seqlen], np.int32))
        b.bind_cpu_input("total_sequence_length", np.array(seqlen + 1, np.int32))
        start_arr = np.array([start if start is not None else 0], np.int64)
        if start is not None:  # an overridable initializer: bound by pointer (bind_cpu_input refuses it)
            b.bind_input("logits_from", "cpu", 0, np.int64, [1], start_arr.ctypes.data)
        b.bind_output("logits", "cpu")
        b.bind_output("logits_all", "cpu")
        for i in range(cfg.num_layers):
            for kind, buf in (("key", cache[2 * i]), ("value", cache[2 * i + 1])):
                b.bind_input(f"past_{kind}.{i}", "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
                b.bind_output(f"present_{kind}.{i}", "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
        sess.run_with_iobinding(b)
        last, every = (o.numpy() for o in b.get_outputs()[:2])
        return last, every

    last, every = call(ids[:, :8].numpy(), 7, None)
    assert every.shape == (1, 0, cfg.vocab_size) and np.abs(last - expected[:, 7]).max() < 1e-4
    last, every = call(ids[:, 8:].numpy(), 11, 0)  # 4 tokens on top of the cached 8: all four positions
    assert every.shape == (1, 4, cfg.vocab_size)
    assert np.abs(every[0] - expected[0, 8:]).max() < 1e-4 and np.abs(last[0] - every[0, -1]).max() < 1e-6
