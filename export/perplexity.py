"""Perplexity of any exported variant, driven the way its graph contract is called.

The standard graph returns logits for every position, so one forward per window scores it
(export/variants.py). The fused graph (GroupQueryAttention, cache updated in place) returns
logits for each row's last position only: it is scored one token at a time over a cache, as
the engine decodes. Both give the same number for the same weights (tests/export).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from contracts.manifest import ATTENTION_KV, GQA, STANDARD, TextManifest
from export.variants import perplexity, token_windows

Progress = Callable[[int], object]  # called with the number of tokens just scored


def fused_call(sess: ort.InferenceSession, ids: np.ndarray, seqlens: np.ndarray, cache: list[np.ndarray]) -> np.ndarray:
    """One call of the fused graph with past and present bound to the same buffers (as served)."""
    b = sess.io_binding()
    b.bind_cpu_input("input_ids", ids)
    b.bind_cpu_input("seqlens_k", seqlens.astype(np.int32))
    b.bind_cpu_input("total_sequence_length", np.array(int(seqlens.max()) + 1, np.int32))
    b.bind_output("logits", "cpu")
    for i in range(len(cache) // 2):
        for kind, buf in (("key", cache[2 * i]), ("value", cache[2 * i + 1])):
            b.bind_input(f"past_{kind}.{i}", "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
            b.bind_output(f"present_{kind}.{i}", "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
    sess.run_with_iobinding(b)
    return b.get_outputs()[0].numpy()


def fused_perplexity(
    onnx_file: Path,
    windows: list[list[int]],
    num_layers: int,
    kv_heads: int,
    head_dim: int,
    progress: Progress | None = None,
) -> float:
    """exp(mean next-token NLL), each window decoded token by token into a fresh cache."""
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    capacity = max(len(w) for w in windows)
    nll, count = 0.0, 0
    for ids in windows:
        cache = [np.zeros((1, kv_heads, capacity, head_dim), np.float32) for _ in range(2 * num_layers)]
        for t in range(len(ids) - 1):
            logits = fused_call(sess, np.array([[ids[t]]], np.int64), np.array([t]), cache)
            row = logits.reshape(-1, logits.shape[-1])[-1].astype(np.float64)
            row -= row.max()
            nll -= float(row[ids[t + 1]] - math.log(np.exp(row).sum()))
            count += 1
        if progress is not None:
            progress(len(ids) - 1)
    return math.exp(nll / max(count, 1))


def variant_perplexity(
    manifest: TextManifest,
    variant: str,
    texts: list[str],
    window: int = 256,
    max_tokens: int = 20_000,
    progress: Progress | None = None,
) -> tuple[float, int]:
    """(perplexity, tokens scored) of one exported variant of a text entry on `texts`."""
    if variant not in manifest.files:
        raise ValueError(f"{manifest.name}: variant {variant!r} was not exported (exported: {sorted(manifest.files)})")
    graph = manifest.graph(variant)
    if any(layer.kind != ATTENTION_KV for layer in manifest.state):
        raise ValueError(f"{manifest.name}: perplexity needs attention-only state (manifest `state` kinds)")
    kv = manifest.state[0].tensors["key.0"]
    kv_heads, head_dim = int(kv[0]), int(kv[-1])
    tokenizer = Tokenizer.from_file(str(manifest.path(manifest.tokenizer)))
    window = min(window, manifest.max_position_embeddings)
    windows = token_windows(tokenizer, texts, manifest.bos_token_id, window, max_tokens)
    if not windows:
        raise ValueError("the text holds no token to score")
    scored = sum(len(w) - 1 for w in windows)
    layers = manifest.num_layers
    if graph.contract == GQA:
        return fused_perplexity(graph.path, windows, layers, kv_heads, head_dim, progress), scored
    if graph.contract == STANDARD:
        ppl = perplexity(graph.path, windows, layers, kv_heads, head_dim)
        if progress is not None:
            progress(scored)
        return ppl, scored
    raise ValueError(f"{manifest.name}: no perplexity driver for graph contract {graph.contract!r}")
