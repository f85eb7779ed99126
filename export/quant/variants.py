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
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch

from export.checkpoint import Checkpoint
from export.models.config import DecoderConfig
from export.models.decoder import DecoderLM
from export.quant.blocks import BlockQuant, dequantize, quantize_rtn
from export.quant.config import QuantConfig
from export.quant.gptq import calibration_windows, collect_hessians, gptq_quantize
from export.quant.graph import EMBED, HEAD, fused_weights, quantize_fused_graph, save, with_accuracy_level
from export.quant.quality import check_budgets, fused_quality
from export.quant.targets import fused_targets
from export.verify import verify_fused_lm

FILES = {"int8": "1/model.int8.onnx", "int4": "1/model.int4.onnx"}
REFERENCE = "fp32"  # the fp32 fused graph, in the quality table
CALIBRATION_WINDOW = 256


def build_quantized_variants(
    ckpt: Checkpoint,
    fused_file: Path,
    staging: Path,
    cfg: QuantConfig,
    windows: list[list[int]],
    calib_texts: Sequence[str] | None,
    tolerance: float,
) -> tuple[dict[str, Path], dict]:
    """Write `int8` and `int4` into `staging`; returns (files, report section)."""
    model = decoder_of(ckpt)
    mcfg = model.config
    timings: dict[str, float] = {}
    t = time.perf_counter()
    weights = fused_weights(fused_file)
    cfg.check_shapes({name: w.shape[0] for name, w in weights.items() if name != EMBED})
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
    section: dict = {"config": cfg.to_dict(), "reference": REFERENCE, "calibration": calibration, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="kiln-quant-") as tmp:
        paths = {REFERENCE: fused_file}
        for variant, (bits, algo, head_bits) in specs.items():
            t = time.perf_counter()
            plan, embed = plan_weights(weights, projections, hessians, bits, algo, head_bits, mcfg, cfg)
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
                "tied_embedding_shared": embed.packed is plan[HEAD].packed,
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
    return files, section


def decoder_of(ckpt: Checkpoint) -> DecoderLM:
    """The checkpoint's attention decoder: quantized variants are fused graphs, which Mamba and
    hybrid models do not have."""
    if not isinstance(ckpt.model, DecoderLM):
        raise ValueError(f"{ckpt.path}: quantized variants are built for attention decoders only")
    return ckpt.model


def plan_weights(
    weights: dict[str, np.ndarray],
    projections: list[str],
    hessians: dict[str, torch.Tensor],
    bits: int,
    algorithm: str,
    head_bits: int,
    model_cfg: DecoderConfig,
    cfg: QuantConfig,
) -> tuple[dict[str, BlockQuant], BlockQuant]:
    """Every weight's quantized form, and the embedding table's (a tied head's codes, shared)."""
    plan: dict[str, BlockQuant] = {}
    for name in projections:
        if algorithm == "gptq":
            plan[name] = gptq_quantize(
                weights[name], hessians[name], bits, cfg.block_size, cfg.symmetric, cfg.gptq_damp
            )
        else:
            plan[name] = quantize_rtn(weights[name], bits, cfg.block_size, cfg.symmetric)
    head = plan[HEAD] = quantize_rtn(weights[HEAD], head_bits, cfg.block_size, cfg.symmetric)
    if not model_cfg.tie_word_embeddings:
        table = np.ascontiguousarray(weights[EMBED].T)  # as a [hidden, vocab] weight
        return plan, quantize_rtn(table, head_bits, cfg.block_size, cfg.symmetric)
    # The fused graph's table is the head times embed_scale (Gemma): the same codes, scaled scales.
    scale = np.float32(model_cfg.embed_scale)
    return plan, replace(head, scales=head.scales * scale) if scale != 1 else head


def dequantized_model(model: DecoderLM, plan: dict[str, BlockQuant], embed: BlockQuant) -> DecoderLM:
    """A copy of `model` holding exactly the weights the quantized graph computes with."""
    ref = copy.deepcopy(model).eval()  # deepcopy keeps a tied head tied
    targets = fused_targets(ref)
    for name, q in plan.items():
        targets[name].put(dequantize(q))  # a tied head: the embedding table too
    if not ref.config.tie_word_embeddings:  # the graph's table carries embed_scale, the model applies it
        table = dequantize(embed).T / np.float32(ref.config.embed_scale)
        with torch.no_grad():
            ref.embed_tokens.weight.copy_(torch.from_numpy(np.ascontiguousarray(table)))
    return ref


def verify_quantized(reference: DecoderLM, graph: Path, tmp: Path, tolerance: float, cfg: QuantConfig) -> dict:
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


def _logit_scale(model: DecoderLM, seed: int = 0) -> float:
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
