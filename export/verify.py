"""Numerical verification of an exported graph against the PyTorch model it came from.

Runs the phases the server runs — a padded prefill with an empty past, a few decode steps
with the growing past, and a decode step over a larger, partly masked past (how the engine's
preallocated cache looks) — and compares logits and the returned keys/values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.models.llama import LlamaLM


class VerificationError(RuntimeError):
    """The exported graph disagrees with PyTorch beyond the tolerance."""


def _session(onnx_file: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])


def _run_both(model, sess, ids, pos, mask, past):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        logits, new_kv = model(ids, pos, mask, past)
    feeds = {"input_ids": ids.numpy(), "position_ids": pos.numpy(), "attention_mask": mask.numpy()}
    for i, (k, v) in enumerate(past):
        feeds[f"past_key.{i}"] = k.numpy()
        feeds[f"past_value.{i}"] = v.numpy()
    outs = sess.run(None, feeds)
    err_logits = float(np.max(np.abs(outs[0] - logits.numpy())))
    err_kv = max(
        float(np.max(np.abs(outs[1 + 2 * i + j] - t.numpy()))) for i, kv in enumerate(new_kv) for j, t in enumerate(kv)
    )
    return logits, new_kv, err_logits, err_kv


def verify_lm(
    model: LlamaLM, onnx_file: Path, tolerance: float = 1e-4, seed: int = 0, raise_on_fail: bool = True
) -> dict:
    """Max |Δ| per phase; raises VerificationError when logits differ by more than `tolerance`."""
    cfg = model.config
    model = model.eval()
    sess = _session(onnx_file)
    gen = torch.Generator().manual_seed(seed)
    batch, prompt = 2, 9
    ids = torch.randint(3, cfg.vocab_size, (batch, prompt), generator=gen)
    mask = torch.ones(batch, prompt, dtype=torch.int64)
    mask[1, -2:] = 0  # a right-padded row
    pos = torch.arange(prompt).unsqueeze(0).expand(batch, prompt).contiguous()
    phases: dict[str, dict[str, float]] = {}

    _, kv, e_logits, e_kv = _run_both(model, sess, ids, pos, mask, model.empty_past(batch))
    phases["prefill"] = {"max_abs_logits": e_logits, "max_abs_kv": e_kv}
    past = kv
    full_mask = mask
    for step in range(3):
        tok = torch.randint(3, cfg.vocab_size, (batch, 1), generator=gen)
        p = torch.full((batch, 1), prompt + step, dtype=torch.int64)
        full_mask = torch.cat([full_mask, torch.ones(batch, 1, dtype=torch.int64)], dim=1)
        _, new, e_logits, e_kv = _run_both(model, sess, tok, p, full_mask, past)
        phases[f"decode_{step}"] = {"max_abs_logits": e_logits, "max_abs_kv": e_kv}
        past = [(torch.cat([pk, k], 2), torch.cat([pv, v], 2)) for (pk, pv), (k, v) in zip(past, new, strict=True)]

    # A decode step over a preallocated buffer: valid columns, then masked garbage columns.
    cap = past[0][0].shape[2] + 5
    buf = []
    for pk, pv in past:
        pad = torch.randn(batch, cfg.num_kv_heads, cap - pk.shape[2], cfg.head_dim, generator=gen)
        buf.append((torch.cat([pk, pad], 2), torch.cat([pv, pad], 2)))
    mask_buf = torch.cat([full_mask, torch.zeros(batch, cap - full_mask.shape[1], dtype=torch.int64)], 1)
    mask_buf = torch.cat([mask_buf, torch.ones(batch, 1, dtype=torch.int64)], 1)
    tok = torch.randint(3, cfg.vocab_size, (batch, 1), generator=gen)
    p = torch.full((batch, 1), prompt + 3, dtype=torch.int64)
    _, _, e_logits, e_kv = _run_both(model, sess, tok, p, mask_buf, buf)
    phases["decode_preallocated"] = {"max_abs_logits": e_logits, "max_abs_kv": e_kv}

    worst = max(ph["max_abs_logits"] for ph in phases.values())
    report = {"tolerance": tolerance, "max_abs_logits": worst, "passed": worst <= tolerance, "phases": phases}
    if raise_on_fail and worst > tolerance:
        raise VerificationError(f"{onnx_file.name}: max |Δlogits| {worst:.3g} exceeds {tolerance:g}: {phases}")
    return report
