"""What quantization costs, measured on the graphs as served: the fused contract, decoding.

`export/variants.py:perplexity` drives the traced standard graph, which returns logits for
every position. The fused graph returns only each row's last position, so here the windows
are *decoded*: one token per row per call, the cache updated in place by the kernel, exactly
as the engine runs generation (rows compacted at the front, fewer rows as short windows end).
All graphs step in lock-step on the same tokens, so the reference's next-token distribution
is at hand for the KL divergence of every other graph at every position, without storing any.

Per graph: perplexity (exp of the mean next-token NLL), mean KL(reference ‖ graph) in nats,
and top-1 agreement (how often the argmax matches the reference's).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.verify import _fused_call

BATCH_ROWS = 16  # windows decoded side by side


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def fused_quality(
    graphs: dict[str, Path],
    windows: list[list[int]],
    num_layers: int,
    kv_heads: int,
    head_dim: int,
    reference: str,
    threads: int = 0,
) -> dict[str, dict[str, float]]:
    """Perplexity, mean KL vs `reference` and top-1 agreement of each fused-contract graph."""
    if reference not in graphs:
        raise ValueError(f"reference {reference!r} is not among {sorted(graphs)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as the runner loads it
    if threads:
        opts.intra_op_num_threads = threads
    sessions = {
        name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for name, p in graphs.items()
    }
    nll = dict.fromkeys(graphs, 0.0)
    kl = dict.fromkeys(graphs, 0.0)
    agree = dict.fromkeys(graphs, 0)
    count = 0
    ordered = sorted((w for w in windows if len(w) >= 2), key=len, reverse=True)
    for b0 in range(0, len(ordered), BATCH_ROWS):
        rows = ordered[b0 : b0 + BATCH_ROWS]
        longest = len(rows[0])
        shape = (len(rows), kv_heads, longest, head_dim)
        caches = {name: [np.zeros(shape, np.float32) for _ in range(2 * num_layers)] for name in graphs}
        lengths = np.array([len(r) for r in rows])
        for t in range(longest - 1):
            n = int((lengths > t + 1).sum())  # rows that still have a next token to predict
            ids = np.array([[r[t]] for r in rows[:n]], np.int64)
            seqlens = np.full(n, t, np.int64)
            targets = np.array([r[t + 1] for r in rows[:n]])
            logp = {
                name: _log_softmax(_fused_call(sess, ids, seqlens, [buf[:n] for buf in caches[name]]))
                for name, sess in sessions.items()
            }
            ref = logp[reference]
            ref_p = np.exp(ref)
            ref_top = ref.argmax(-1)
            for name, lp in logp.items():
                nll[name] -= float(lp[np.arange(n), targets].sum())
                kl[name] += float((ref_p * (ref - lp)).sum())
                agree[name] += int((lp.argmax(-1) == ref_top).sum())
            count += n
    count = max(count, 1)
    return {
        name: {
            "perplexity": math.exp(nll[name] / count),
            "mean_kl": max(kl[name] / count, 0.0),
            "top1_agreement": agree[name] / count,
            "tokens": count,
        }
        for name in graphs
    }


class QuantBudgetError(RuntimeError):
    """A quantized variant costs more validation perplexity than the export allows."""


def check_budgets(measured: dict[str, dict[str, float]], budgets: dict[str, tuple[float, str]], reference: str) -> dict:
    """Perplexity increase (%) of each budgeted variant over the reference; raises once for all that exceed.

    `budgets` maps variant → (largest increase in %, the flag that sets it).
    """
    base = measured[reference]["perplexity"]
    result, over = {}, []
    for variant, (limit, flag) in budgets.items():
        got = measured[variant]["perplexity"]
        pct = 100 * (got / base - 1)
        result[variant] = {"increase_pct": pct, "budget_pct": limit, "passed": pct <= limit}
        if pct > limit:
            over.append(
                f"{variant} perplexity {got:.4f} is {pct:+.3f}% over fp32's {base:.4f} (budget +{limit:g}%, {flag})"
            )
    if over:
        raise QuantBudgetError(
            "quantized variants over their perplexity budget: " + "; ".join(over) + ". Raise the budget, "
            "or change the variant (--quant-block-size, --int4-algorithm, --int4-head-bits), and export again."
        )
    return result
