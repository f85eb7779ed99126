"""`kiln export`: checkpoint → verified ONNX (+ variants) → one Triton model-repository entry.

Everything is written into a temporary sibling directory and swapped in at the end, so a
failed or interrupted export never leaves a half-written model where a gateway (or Triton)
would load it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from contracts.manifest import GQA, STANDARD, TextManifest, attention_state
from contracts.triton import triton_lm_name
from export.chat import TEMPLATE_FILE, find_chat_template, special_tokens
from export.checkpoint import load_checkpoint
from export.fused_graph import build_fused_lm_onnx, fused_unsupported
from export.hybrid_pipeline import export_hybrid_checkpoint
from export.models.hybrid import HybridLM
from export.onnx_export import export_lm_onnx, new_report
from export.progress import bar
from export.quant.config import QuantConfig
from export.quant.variants import FILES as QUANT_FILES
from export.quant.variants import build_quantized_variants
from export.triton_repo import lm_onnx_config, staged_entry, write_config, write_lm_python_entry
from export.variants import optimize_offline, perplexity, token_windows
from export.verify import verify_fused_lm, verify_lm

VERSION_DIR = "1"
FILES = {
    "fp32": "1/model.onnx",
    "fused": "1/model.fused.onnx",
    "optimized": "1/model.opt.onnx",
    **QUANT_FILES,  # weight-only MatMulNBits variants of the fused graph (export/quant/)
}
GENERATION_DEFAULTS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}


def export_checkpoint(
    checkpoint: Path,
    repository: Path,
    name: str,
    variants: bool = True,
    val_texts: Sequence[str] | None = None,
    tolerance: float = 1e-4,
    ppl_tokens: int = 8192,
    target: str = "inprocess",
    tensorrt: bool = False,
    fp16: bool = False,
    quant: QuantConfig | None = None,
    calib_texts: Sequence[str] | None = None,
) -> dict:
    """Export, verify and write `repository/name`; returns the export report (also saved as JSON).

    target="triton" also writes `repository/<name>-triton/`, the decoupled python-backend model
    that runs Kiln's engine inside Triton (docs/triton.md). tensorrt=True builds and verifies a
    TensorRT engine from the fp32 graph when TensorRT and a CUDA GPU are present, and records
    why it was skipped otherwise. Mamba / hybrid checkpoints go to export/hybrid_pipeline.py
    (fp32 prefill + decode graphs; `variants` does not apply).

    variants=True also writes the weight-only quantized fused graphs `int8` and `int4`
    (export/quant/, settings in `quant`; GPTQ calibrates on `calib_texts`, by default the demo
    corpus' training split) and fails when either costs more perplexity than its budget. A model
    without a fused graph gets none (the report says why).
    """
    if target not in ("inprocess", "triton"):
        raise ValueError(f"unknown export target {target!r} (inprocess or triton)")
    started = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.model
    if isinstance(model, HybridLM):  # state-space / hybrid: its own graph contract
        texts = list(val_texts) if val_texts is not None else _default_val_texts()
        return export_hybrid_checkpoint(ckpt, repository, name, texts, tolerance, ppl_tokens, target, tensorrt)
    cfg = model.config
    stages = bar(5, f"export {name}", unit="stage")  # graph, fused, variants, perplexity, write
    with staged_entry(repository, name) as staging:
        report = new_report(name, ckpt, checkpoint)
        t = time.perf_counter()
        fp32 = export_lm_onnx(model, staging / FILES["fp32"])
        report["timings_s"]["export"] = time.perf_counter() - t
        t = time.perf_counter()
        report["verification"]["fp32"] = verify_lm(model, fp32, tolerance)
        stages.update()
        produced = {"fp32": fp32}
        # The graph the in-process engine serves (ONNX Runtime contrib operators, cache updated
        # in place): same weights, checked against PyTorch the way the engine drives it.
        # A config GroupQueryAttention cannot run gets no fused graph: the runner falls back to
        # the standard one, and the report says why.
        no_fused = fused_unsupported(cfg)
        if no_fused:
            report["fused_skipped"] = no_fused
        else:
            fused = build_fused_lm_onnx(model, staging / FILES["fused"])
            report["verification"]["fused"] = verify_fused_lm(model, fused, tolerance)
        stages.update()
        if variants:
            opt = optimize_offline(fp32, staging / FILES["optimized"])
            report["verification"]["optimized"] = verify_lm(model, opt, tolerance)
            produced["optimized"] = opt
        report["timings_s"]["verify"] = time.perf_counter() - t
        stages.update()

        t = time.perf_counter()
        texts = list(val_texts) if val_texts is not None else _default_val_texts()
        windows = token_windows(
            ckpt.tokenizer, texts, cfg.bos_token_id, min(256, cfg.max_position_embeddings), ppl_tokens
        )
        report["perplexity_tokens"] = sum(len(w) - 1 for w in windows)
        if not no_fused:
            report["size_bytes"]["fused"] = fused.stat().st_size
        for variant, path in produced.items():  # standard-contract graphs (fused: verified above)
            report["perplexity"][variant] = perplexity(path, windows, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim)
            report["size_bytes"][variant] = path.stat().st_size
        report["timings_s"]["perplexity"] = time.perf_counter() - t
        stages.update()

        t = time.perf_counter()
        quantized: dict[str, Path] = {}
        if variants and no_fused:
            report["quantization"] = {"skipped": f"the quantized variants are fused graphs: {no_fused}"}
        elif variants:
            quantized, report["quantization"] = build_quantized_variants(
                ckpt, fused, staging, quant or QuantConfig(), windows, calib_texts, tolerance
            )
            quality = report["quantization"]["quality"]
            report["perplexity"]["fused"] = quality["fp32"]["perplexity"]
            for variant, path in quantized.items():  # fused contract, measured decoding (export/quant/quality.py)
                report["perplexity"][variant] = quality[variant]["perplexity"]
                report["size_bytes"][variant] = path.stat().st_size
                report["verification"][variant] = report["quantization"]["variants"][variant]["verification"]["exact"]
                report[f"{variant}_perplexity_increase_pct"] = report["quantization"]["budget"][variant]["increase_pct"]
            report["timings_s"]["quantize"] = time.perf_counter() - t

        ckpt.tokenizer.save(str(staging / "tokenizer.json"))
        template = find_chat_template(checkpoint, ckpt.source)
        if template is not None:
            (staging / TEMPLATE_FILE).write_text(template)
        manifest = TextManifest(
            name=name,
            files={k: FILES[k] for k in [*produced, *([] if no_fused else ["fused"]), *quantized]},
            graphs={
                **{k: STANDARD for k in produced},
                **({} if no_fused else {"fused": GQA}),
                **dict.fromkeys(quantized, GQA),
            },
            state=attention_state(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim),
            vocab_size=cfg.vocab_size,
            max_position_embeddings=cfg.max_position_embeddings,
            bos_token_id=cfg.bos_token_id,
            eos_token_ids=tuple(cfg.eos_token_ids),  # every id that ends generation (Llama 3, Qwen: several)
            pad_token_id=cfg.pad_token_id,
            add_bos=ckpt.add_bos,
            generation_defaults=GENERATION_DEFAULTS,
            chat_template=TEMPLATE_FILE if template is not None else None,
            special_tokens=special_tokens(checkpoint, ckpt.source),
            architecture={
                "family": cfg.family,
                "num_layers": cfg.num_layers,
                "num_heads": cfg.num_heads,
                "num_kv_heads": cfg.num_kv_heads,
                "head_dim": cfg.head_dim,
                "hidden_size": cfg.hidden_size,
            },
            triton_model=triton_lm_name(name) if target == "triton" else None,
        )
        if tensorrt:
            from export.tensorrt import build_lm_engine

            t = time.perf_counter()
            report["tensorrt"] = build_lm_engine(fp32, staging / VERSION_DIR / "model.plan", cfg, fp16=fp16)
            report["timings_s"]["tensorrt"] = time.perf_counter() - t
        manifest.write(staging)
        write_config(staging, lm_onnx_config(name, manifest.state, cfg.vocab_size))
        report["timings_s"]["total"] = time.perf_counter() - started
        report["summary"] = {
            "model": name,
            "parameters": report["parameters"],
            "max_abs_logits": {k: v["max_abs_logits"] for k, v in report["verification"].items()},
            "perplexity": report["perplexity"],
            "size_mb": {k: round(v / 2**20, 2) for k, v in report["size_bytes"].items()},
        }
        (staging / "export_report.json").write_text(json.dumps(report, indent=2, default=str))
        stages.update()
    stages.close()
    if target == "triton":
        entry = write_lm_python_entry(repository / name, repository)
        report["triton"] = {"model": entry.name, "path": str(entry)}
    return report


def _default_val_texts() -> list[str]:
    from export.train_demo.corpus import load_corpus

    return load_corpus().val
