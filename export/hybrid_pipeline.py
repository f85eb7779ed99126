"""`kiln export` for state-space / hybrid LMs: HybridLM → verified "hybrid" graphs → repository entry.

Writes `1/model.onnx` (any S: prefill, chunked prefill, mixed batches) and `1/model.decode.onnx`
(S = 1), both under the contract documented in export/hybrid_graph.py, checks them against
PyTorch (and, for an imported checkpoint, against transformers), measures validation
perplexity on the prefill graph, and writes `kiln.json` with the per-slot `state` of every
layer so a runner can allocate state without knowing the architecture:

    "state": [{"kind": "recurrent", "tensors": {"conv.0": [d_inner, k-1], "ssm.0": [d_inner, N]}},
              {"kind": "attention_kv", "tensors": {"key.1": [kv_heads, "positions", head_dim],
                                                   "value.1": [kv_heads, "positions", head_dim]}}, ...]
    "graphs": {"fp32": "hybrid"}, "decode_files": {"fp32": "1/model.decode.onnx"},
    "architecture": {"layers": [...], "state_bytes": {...}, "inputs": [...], "outputs": [...]}

written through `contracts.manifest.TextManifest` (manifest v2) like every text entry.

target="triton" also writes `<name>-triton/`, the decoupled python-backend model running Kiln's
engine (and so the hybrid runner) inside Triton, as for attention decoders. No INT8/optimized
variants, fused graph or TensorRT engine are built for these models yet; asking for TensorRT is
refused rather than skipped silently.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contracts.manifest import HYBRID, LayerState, TextManifest
from contracts.triton import triton_lm_name
from export.chat import TEMPLATE_FILE, find_chat_template, special_tokens
from export.checkpoint import Checkpoint
from export.hybrid_graph import export_hybrid_onnx, input_names, output_names
from export.models.hybrid import HybridLM
from export.onnx_export import new_report
from export.triton_repo import staged_entry, write_lm_python_entry
from export.variants import token_windows
from export.verify_hybrid import verify_against_transformers, verify_hybrid

FILES = {"fp32": "1/model.onnx"}
DECODE_FILES = {"fp32": "1/model.decode.onnx"}


def state_bytes(model: HybridLM) -> dict[str, int]:
    """fp32 bytes per slot: the fixed recurrent part, and the attention KV per cached position."""
    fixed, per_position = 0, 0
    for entry in model.state_spec():
        for shape in entry["tensors"].values():
            size = 4 * math.prod(d for d in shape if d != "positions")
            if "positions" in shape:
                per_position += size
            else:
                fixed += size
    return {"recurrent_per_slot": fixed, "attention_kv_per_position": per_position}


def hybrid_perplexity(onnx_file: Path, model: HybridLM, windows: list[list[int]]) -> float:
    """exp(mean next-token NLL), one prefill call per window from a fresh state."""
    sess = ort.InferenceSession(str(onnx_file), ort.SessionOptions(), providers=["CPUExecutionProvider"])
    fresh = {}
    for entry in model.state_spec():
        for name, shape in entry["tensors"].items():
            fresh[f"past_{name}"] = np.zeros([1, *(0 if d == "positions" else d for d in shape)], np.float32)
    nll, count = 0.0, 0
    for ids in windows:
        arr = np.array([ids], np.int64)
        feeds = {"input_ids": arr, "position_ids": np.arange(len(ids))[None], "attention_mask": np.ones_like(arr)}
        logits = sess.run(["logits"], {**feeds, **fresh})[0][0, :-1].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        targets = np.array(ids[1:])
        nll -= float(logp[np.arange(len(targets)), targets].sum())
        count += len(targets)
    return math.exp(nll / max(count, 1))


def export_hybrid_checkpoint(
    ckpt: Checkpoint,
    repository: Path,
    name: str,
    val_texts: Sequence[str],
    tolerance: float = 1e-4,
    ppl_tokens: int = 8192,
    target: str = "inprocess",
    tensorrt: bool = False,
) -> dict:
    if target not in ("inprocess", "triton"):
        raise ValueError(f"unknown export target {target!r} (inprocess or triton)")
    if tensorrt:
        raise ValueError("--tensorrt: no TensorRT engine is built for state-space/hybrid models yet")
    started = time.perf_counter()
    model = ckpt.model
    assert isinstance(model, HybridLM)
    cfg = model.config
    with staged_entry(repository, name) as staging:
        report = new_report(name, ckpt, ckpt.path, architecture="hybrid")
        t = time.perf_counter()
        prefill = export_hybrid_onnx(model, staging / FILES["fp32"])
        decode = export_hybrid_onnx(model, staging / DECODE_FILES["fp32"], decode=True)
        report["timings_s"]["export"] = time.perf_counter() - t
        t = time.perf_counter()
        report["verification"]["fp32"] = verify_hybrid(model, prefill, decode, tolerance)
        if ckpt.source == "huggingface":
            report["verification"]["transformers"] = verify_against_transformers(ckpt.path, prefill, decode, tolerance)
        report["timings_s"]["verify"] = time.perf_counter() - t

        t = time.perf_counter()
        window = min(256, cfg.max_position_embeddings)
        windows = token_windows(ckpt.tokenizer, list(val_texts), cfg.bos_token_id, window, ppl_tokens)
        report["perplexity_tokens"] = sum(len(w) - 1 for w in windows)
        report["perplexity"]["fp32"] = hybrid_perplexity(prefill, model, windows)
        report["timings_s"]["perplexity"] = time.perf_counter() - t
        report["size_bytes"] = {"fp32": prefill.stat().st_size, "fp32_decode": decode.stat().st_size}

        ckpt.tokenizer.save(str(staging / "tokenizer.json"))
        template = find_chat_template(ckpt.path, ckpt.source)
        if template is not None:
            (staging / TEMPLATE_FILE).write_text(template)
        manifest = hybrid_manifest(
            model,
            name,
            ckpt.add_bos,
            special_tokens(ckpt.path, ckpt.source),
            chat_template=TEMPLATE_FILE if template is not None else None,
            triton_model=triton_lm_name(name) if target == "triton" else None,
        )
        manifest.write(staging)
        report["timings_s"]["total"] = time.perf_counter() - started
        report["summary"] = {
            "model": name,
            "layers": cfg.layers,
            "parameters": report["parameters"],
            "max_abs": {k: v.get("max_abs") for k, v in report["verification"].items()},
            "perplexity": report["perplexity"],
            "state_bytes": manifest.architecture["state_bytes"],
            "size_mb": {k: round(v / 2**20, 2) for k, v in report["size_bytes"].items()},
        }
        (staging / "export_report.json").write_text(json.dumps(report, indent=2, default=str))
    if target == "triton":
        entry = write_lm_python_entry(repository / name, repository)
        report["triton"] = {"model": entry.name, "path": str(entry)}
    return report


def hybrid_manifest(
    model: HybridLM,
    name: str,
    add_bos: bool,
    special: dict[str, str] | None = None,
    chat_template: str | None = None,
    triton_model: str | None = None,
) -> TextManifest:
    from export.pipeline import GENERATION_DEFAULTS

    cfg = model.config
    return TextManifest(
        name=name,
        files=dict(FILES),
        graphs={variant: HYBRID for variant in FILES},
        decode_files=dict(DECODE_FILES),
        state=tuple(LayerState.from_dict(entry, name) for entry in model.state_spec()),
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=cfg.bos_token_id,
        eos_token_ids=tuple(cfg.eos_token_ids),
        pad_token_id=cfg.pad_token_id,
        add_bos=add_bos,
        generation_defaults=GENERATION_DEFAULTS,
        special_tokens=dict(special or {}),
        chat_template=chat_template,
        triton_model=triton_model,
        architecture={
            "family": "hybrid",
            "layers": cfg.layer_kinds,
            "positions": cfg.positions,
            "norm": cfg.norm,
            "num_layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size,
            "state_bytes": state_bytes(model),
            "inputs": input_names(model),
            "outputs": output_names(model),
        },
    )
