"""Derived standard-contract graphs (ONNX Runtime offline optimization) and the quality
yardstick they are judged by: validation perplexity, measured with ONNX Runtime on exactly the
graph that will be served. The quantized variants are fused graphs: export/quant/.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def optimize_offline(src: Path, dst: Path) -> Path:
    """Save the graph after ORT's portable (extended) optimizations: fusions that are valid on any
    execution provider, unlike the layout transforms of ORT_ENABLE_ALL."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    return dst


def token_windows(
    tokenizer: Tokenizer, texts: Sequence[str], bos_id: int, window: int, max_tokens: int
) -> list[list[int]]:
    """Validation texts as BOS-prefixed windows, at most `max_tokens` tokens overall."""
    windows: list[list[int]] = []
    budget = max_tokens
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        for start in range(0, len(ids), window - 1):
            chunk = [bos_id, *ids[start : start + window - 1]]
            if len(chunk) < 2:
                continue
            windows.append(chunk[:budget])
            budget -= len(chunk)
            if budget <= 1:
                return windows
    return windows


def perplexity(onnx_file: Path, windows: list[list[int]], num_layers: int, kv_heads: int, head_dim: int) -> float:
    """exp(mean next-token NLL) over the windows, one full forward (empty past) per window."""
    opts = ort.SessionOptions()
    sess = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    empty = np.zeros((1, kv_heads, 0, head_dim), np.float32)
    nll, count = 0.0, 0
    for ids in windows:
        arr = np.array([ids], np.int64)
        feeds: dict[str, np.ndarray] = {
            "input_ids": arr,
            "position_ids": np.arange(len(ids), dtype=np.int64)[None],
            "attention_mask": np.ones_like(arr),
        }
        for i in range(num_layers):
            feeds[f"past_key.{i}"] = empty
            feeds[f"past_value.{i}"] = empty
        logits = sess.run(["logits"], feeds)[0][0, :-1].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        targets = np.array(ids[1:])
        nll -= float(logp[np.arange(len(targets)), targets].sum())
        count += len(targets)
    return math.exp(nll / max(count, 1))
