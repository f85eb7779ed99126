"""Build, verify and judge the quantized fused variants of one export (`int8`, `int4`).

- int8: every projection and the LM head at 8 bits, round-to-nearest; the embedding too.
- int4: the projections at 4 bits by `int4_algorithm` (GPTQ by default, calibrated on the
  training split); the LM head and embedding at `head_bits` by round-to-nearest. GPTQ is not
  used for the head: a tied head *is* the embedding table, whose rows must stay close to the
  originals, not be bent towards the final norm's outputs.
- int4-rtn (when int4 uses another algorithm): built and measured as the baseline, not kept.

Each graph is verified twice against a PyTorch model holding the dequantized weights: its
accuracy_level-0 twin (MatMulNBits dequantizes to fp32) must match to the export tolerance,
which proves the packed layout and the cache semantics; the served graph (int8 activations)
within `served_rtol` of the reference's logit range. Then all are measured in lock-step on the
validation windows and the budgets are enforced.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from export.checkpoint import Checkpoint
from export.models.llama import LlamaLM
from export.quant.blocks import BlockQuant, dequantize, quantize_rtn
from export.quant.config import QuantConfig
from export.quant.gptq import calibration_windows, collect_hessians, gptq_quantize
from export.quant.graph import EMBED, HEAD, fused_weights, quantize_fused_graph, save, with_accuracy_level
from export.quant.quality import check_budgets, fused_quality
from export.verify import verify_fused_lm

FILES = {"int8": "1/model.int8.onnx", "int4": "1/model.int4.onnx"}
REFERENCE = "fp32"  # the fp32 fused graph, in the quality table
CALIBRATION_WINDOW = 256
# kiln.json `quantization.<variant>`: how the served graph was made (informative; the runner needs none)
MANIFEST_KEYS = ("bits", "algorithm", "head_bits", "embedding_bits", "block_size", "symmetric", "accuracy_level")


def build_quantized_variants(
    ckpt: Checkpoint,
    fused_file: Path,
    staging: Path,
    cfg: QuantConfig,
    windows: list[list[int]],
    calib_texts: Sequence[str] | None,
    tolerance: float,
) -> tuple[dict[str, Path], dict[str, dict], dict]:
    """Write `int8` and `int4` into `staging`; returns (files, manifest entries, report section)."""
    model, mcfg = ckpt.model, ckpt.config
    cfg.check_shapes(mcfg.hidden_size, mcfg.intermediate_size)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    weights = fused_weights(fused_file)
    projections = [name for name in weights if name not in (HEAD, EMBED)]
    specs = {"int8": (8, "rtn", 8), "int4": (4, cfg.int4_algorithm, cfg.head_bits)}
    if cfg.int4_algorithm != "rtn":
        specs["int4-rtn"] = (4, "rtn", cfg.head_bits)
    calibration: dict = {}
    hessians: dict[str, torch.Tensor] = {}
    if any(algo == "gptq" for _, algo, _ in specs.values()):
        texts = list(calib_texts) if calib_texts is not None else _default_train_texts()
        calib = calibration_windows(
            ckpt.tokenizer,
            texts,
            mcfg.bos_token_id,
            min(CALIBRATION_WINDOW, mcfg.max_position_embeddings),
            cfg.calibration_tokens,
        )
        hessians = collect_hessians(model, calib, projections)
        source = "demo corpus, training split" if calib_texts is None else "calib_texts"
        calibration = {"texts": source, "windows": len(calib), "tokens": sum(len(w) for w in calib)}
    timings["calibrate"] = time.perf_counter() - t

    files: dict[str, Path] = {}
    manifest: dict[str, dict] = {}
    section: dict = {"config": cfg.to_dict(), "reference": REFERENCE, "calibration": calibration, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="kiln-quant-") as tmp:
        paths = {REFERENCE: fused_file}
        for variant, (bits, algo, head_bits) in specs.items():
            t = time.perf_counter()
            plan, embed = plan_weights(
                weights, projections, hessians, bits, algo, head_bits, mcfg.tie_word_embeddings, cfg
            )
            dst = staging / FILES[variant] if variant in FILES else Path(tmp) / f"{variant}.onnx"
            quantize_fused_graph(fused_file, dst, plan, embed, cfg.accuracy_level)
            timings[f"quantize_{variant}"] = time.perf_counter() - t
            t = time.perf_counter()
            reference = dequantized_model(model, plan, embed)
            info = {
                "file": FILES.get(variant),
                "served": variant in FILES,
                "bits": bits,
                "algorithm": algo,
                "head_bits": head_bits,
                "embedding_bits": embed.bits,
                "tied_embedding_shared": plan[HEAD] is embed,
                "block_size": cfg.block_size,
                "symmetric": cfg.symmetric,
                "accuracy_level": cfg.accuracy_level,
                "size_bytes": dst.stat().st_size,
                "ops": dict(Counter(n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node)),
                "weight_rel_rmse": _weight_error(weights, plan, embed),
                "verification": verify_quantized(reference, dst, Path(tmp), tolerance, cfg),
            }
            timings[f"verify_{variant}"] = time.perf_counter() - t
            section["variants"][variant] = info
            paths[variant] = dst
            if variant in FILES:
                files[variant] = dst
                manifest[variant] = {k: info[k] for k in MANIFEST_KEYS}
        t = time.perf_counter()
        measured = fused_quality(paths, windows, mcfg.num_layers, mcfg.num_kv_heads, mcfg.head_dim, REFERENCE)
        timings["quality"] = time.perf_counter() - t
    section["quality"] = measured
    section["timings_s"] = timings
    budgets = {
        "int8": (cfg.int8_budget_pct, "--int8-ppl-budget / int8_budget_pct"),
        "int4": (cfg.int4_budget_pct, "--int4-ppl-budget / int4_budget_pct"),
    }
    section["budget"] = check_budgets(measured, budgets, REFERENCE)
    return files, manifest, section


def plan_weights(
    weights: dict[str, np.ndarray],
    projections: list[str],
    hessians: dict[str, torch.Tensor],
    bits: int,
    algorithm: str,
    head_bits: int,
    tied: bool,
    cfg: QuantConfig,
) -> tuple[dict[str, BlockQuant], BlockQuant]:
    plan: dict[str, BlockQuant] = {}
    for name in projections:
        if algorithm == "gptq":
            plan[name] = gptq_quantize(
                weights[name], hessians[name], bits, cfg.block_size, cfg.symmetric, cfg.gptq_damp
            )
        else:
            plan[name] = quantize_rtn(weights[name], bits, cfg.block_size, cfg.symmetric)
    plan[HEAD] = quantize_rtn(weights[HEAD], head_bits, cfg.block_size, cfg.symmetric)
    embed = (
        plan[HEAD]
        if tied
        else quantize_rtn(np.ascontiguousarray(weights[EMBED].T), head_bits, cfg.block_size, cfg.symmetric)
    )
    return plan, embed


def dequantized_model(model: LlamaLM, plan: dict[str, BlockQuant], embed: BlockQuant) -> LlamaLM:
    """A copy of `model` holding exactly the weights the quantized graph computes with."""
    ref = copy.deepcopy(model).eval()  # deepcopy keeps a tied head tied

    def put(param: torch.nn.Parameter, value: np.ndarray) -> None:
        param.copy_(torch.from_numpy(np.ascontiguousarray(value)))

    with torch.no_grad():
        for i, layer in enumerate(ref.layers):
            p = f"layers.{i}."
            attn, mlp = layer.self_attn, layer.mlp
            qkv = dequantize(plan[p + "qkv"]).T
            nq, nk = attn.q_proj.out_features, attn.k_proj.out_features
            put(attn.q_proj.weight, qkv[:nq])
            put(attn.k_proj.weight, qkv[nq : nq + nk])
            put(attn.v_proj.weight, qkv[nq + nk :])
            put(attn.o_proj.weight, dequantize(plan[p + "o"]).T)
            put(mlp.gate_proj.weight, dequantize(plan[p + "gate"]).T)
            put(mlp.up_proj.weight, dequantize(plan[p + "up"]).T)
            put(mlp.down_proj.weight, dequantize(plan[p + "down"]).T)
        put(ref.embed_tokens.weight, dequantize(embed).T)
        if not ref.config.tie_word_embeddings:
            put(ref.lm_head.weight, dequantize(plan[HEAD]).T)
    return ref


def verify_quantized(reference: LlamaLM, graph: Path, tmp: Path, tolerance: float, cfg: QuantConfig) -> dict:
    """The exact twin (fp32 compute) to `tolerance`, then the served graph to served_rtol × max |logit|."""
    twin = tmp / f"{graph.stem}.exact.onnx"
    save(with_accuracy_level(graph, 0), twin)
    out = {"exact": verify_fused_lm(reference, twin, tolerance)}
    for leftover in (twin, twin.with_name(twin.name + ".data")):
        leftover.unlink(missing_ok=True)
    if cfg.accuracy_level:
        scale = _logit_scale(reference)
        out["served"] = verify_fused_lm(reference, graph, cfg.served_rtol * scale)
        out["served"]["logit_scale"] = scale
    return out


def _logit_scale(model: LlamaLM, seed: int = 0) -> float:
    """max |logit| of the reference over random tokens (what the served tolerance is relative to)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (2, 16), generator=gen)
    with torch.no_grad():
        return float(model.logits_full(ids).abs().max())


def _weight_error(weights: dict[str, np.ndarray], plan: dict[str, BlockQuant], embed: BlockQuant) -> dict[str, float]:
    """RMS(dequantized - fp32) / RMS(fp32), over the projections, the head and the embedding."""

    def rel(w: np.ndarray, q: BlockQuant) -> float:
        return float(np.sqrt(np.mean((dequantize(q) - w) ** 2) / np.mean(w**2)))

    projections = [rel(weights[n], q) for n, q in plan.items() if n != HEAD]
    return {
        "projections_mean": float(np.mean(projections)),
        "lm_head": rel(weights[HEAD], plan[HEAD]),
        "embedding": rel(np.ascontiguousarray(weights[EMBED].T), embed),
    }


def _default_train_texts() -> list[str]:
    from export.train_demo.corpus import load_corpus

    return load_corpus().train
