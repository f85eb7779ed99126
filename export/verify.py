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

from export.models.decoder import DecoderLM
from export.perplexity import fused_call as _fused_call


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
    model: DecoderLM, onnx_file: Path, tolerance: float = 1e-4, seed: int = 0, raise_on_fail: bool = True
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


def verify_fused_lm(model: DecoderLM, onnx_file: Path, tolerance: float = 1e-4, seed: int = 0) -> dict:
    """Check the fused graph (export/fused_graph.py) the way the engine drives it.

    Two rows of a shared cache whose unused columns hold garbage: row 0 prefilled in one
    call, row 1 in two chunks (the second attending to the first through the cache), then
    batched decode steps with the rows at different lengths. Each call's last-position logits
    are compared with PyTorch's full forward over the same tokens, and the cache columns the
    kernel wrote with the keys/values PyTorch computes.
    """
    cfg = model.config
    model = model.eval()
    sess = _session(onnx_file)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    capacity = 24
    shape = (2, cfg.num_kv_heads, capacity, cfg.head_dim)
    cache = [rng.standard_normal(shape).astype(np.float32) for _ in range(2 * cfg.num_layers)]
    seqs = [torch.randint(3, cfg.vocab_size, (n,), generator=gen).tolist() for n in (9, 7)]

    def reference(tokens: list[int]) -> tuple[np.ndarray, list[tuple[torch.Tensor, torch.Tensor]]]:
        with torch.no_grad():
            ids = torch.tensor([tokens])
            pos = torch.arange(len(tokens)).unsqueeze(0)
            logits, kv = model(ids, pos, torch.ones_like(ids), model.empty_past(1))
        return logits[0, -1].numpy(), kv

    phases: dict[str, dict[str, float]] = {}

    def check(phase: str, got: np.ndarray, rows: list[int]) -> None:
        err_logits, err_kv = 0.0, 0.0
        for out_row, row in enumerate(rows):
            want, kv = reference(seqs[row][: lengths[row]])
            err_logits = max(err_logits, float(np.max(np.abs(got[out_row] - want))))
            for i, (k, v) in enumerate(kv):
                n = lengths[row]
                err_kv = max(err_kv, float(np.max(np.abs(cache[2 * i][row, :, :n] - k[0].numpy()))))
                err_kv = max(err_kv, float(np.max(np.abs(cache[2 * i + 1][row, :, :n] - v[0].numpy()))))
        phases[phase] = {"max_abs_logits": err_logits, "max_abs_kv": err_kv}

    def row_view(row: int) -> list[np.ndarray]:
        return [buf[row : row + 1] for buf in cache]  # contiguous: leading axis

    lengths = [9, 0]
    check("prefill", _fused_call(sess, np.array([seqs[0]]), np.array([8]), row_view(0)), [0])
    lengths[1] = 4
    check("prefill_chunk_1", _fused_call(sess, np.array([seqs[1][:4]]), np.array([3]), row_view(1)), [1])
    lengths[1] = 7
    check("prefill_chunk_2", _fused_call(sess, np.array([seqs[1][4:]]), np.array([6]), row_view(1)), [1])
    for step in range(3):
        new = torch.randint(3, cfg.vocab_size, (2,), generator=gen).tolist()
        ids = np.array([[new[0]], [new[1]]], np.int64)
        seqlens = np.array(lengths, np.int64)
        for row in range(2):
            seqs[row].append(new[row])
            lengths[row] += 1
        check(f"decode_{step}", _fused_call(sess, ids, seqlens, cache), [0, 1])

    worst = max(ph["max_abs_logits"] for ph in phases.values())
    worst_kv = max(ph["max_abs_kv"] for ph in phases.values())
    passed = worst <= tolerance and worst_kv <= tolerance
    report: dict = {"tolerance": tolerance, "max_abs_logits": worst, "max_abs_kv": worst_kv, "passed": passed}
    report["phases"] = phases
    if not passed:
        raise VerificationError(f"{onnx_file.name}: max |Δlogits| {worst:.3g}, |Δkv| {worst_kv:.3g}: {phases}")
    return report
