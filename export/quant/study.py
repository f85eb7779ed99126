"""Why the quantization defaults are what they are: alternatives measured side by side.

`python -m export.quant.study --entry model_repository/demo-lm --checkpoint checkpoints/demo-lm`
builds 4-bit candidates of an exported LM's fp32 fused graph and measures them, in one
lock-step pass on the export's validation windows (export/quant/quality.py), against that
graph: Kiln's own packing with other block sizes, asymmetric codes, an 8-bit head, fp32
compute, round-to-nearest, and ONNX Runtime's `MatMulNBitsQuantizer` run on the same graph
with its RTN, HQQ and GPTQ algorithms. The JSON it writes feeds docs/quantization.md
(`export.quant.docs`). It measures quality and size only, never speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from export.checkpoint import load_checkpoint
from export.quant.config import QuantConfig
from export.quant.gptq import calibration_windows, collect_hessians
from export.quant.graph import EMBED, HEAD, fused_weights, quantize_fused_graph
from export.quant.quality import fused_quality
from export.quant.variants import CALIBRATION_WINDOW, decoder_of, plan_weights
from export.variants import token_windows

# label → (what differs from the default int4, QuantConfig overrides, algorithm)
KILN_CANDIDATES: dict[str, tuple[str, dict, str]] = {
    "kiln-gptq": ("the default int4: GPTQ, head 4-bit, symmetric, block 32, int8 compute", {}, "gptq"),
    "kiln-rtn": ("round-to-nearest instead of GPTQ", {}, "rtn"),
    "kiln-gptq-head8": ("LM head and embedding at 8 bits", {"head_bits": 8}, "gptq"),
    "kiln-gptq-asym": ("asymmetric codes (a zero point per block)", {"symmetric": False}, "gptq"),
    "kiln-gptq-b64": ("block size 64", {"block_size": 64}, "gptq"),
    "kiln-gptq-b16": ("block size 16", {"block_size": 16}, "gptq"),
    "kiln-gptq-fp32compute": ("accuracy_level 0: activations stay fp32", {"accuracy_level": 0}, "gptq"),
}
ORT_CANDIDATES = {
    "ort-rtn": "MatMulNBitsQuantizer, default (RTN) algorithm, every MatMul and the Gather at 4 bits",
    "ort-hqq": "MatMulNBitsQuantizer, HQQ: every MatMul at 4 bits (float zero points), embedding fp32",
    "ort-gptq": "MatMulNBitsQuantizer, GPTQ on training-split prefill feeds: every MatMul at 4 bits, embedding fp32",
}


def _ort_quantize(src: Path, dst: Path, label: str, cfg: QuantConfig, calib_feeds: list[dict]) -> None:
    from onnxruntime.quantization.calibrate import CalibrationDataReader
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        GPTQWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

    class Feeds(CalibrationDataReader):
        def get_next(self) -> dict | None:  # unused: the GPTQ path iterates
            return None

        def __iter__(self) -> Iterator[dict]:
            return iter(calib_feeds)

    kwargs: dict = {}
    if label == "ort-rtn":
        algo = DefaultWeightOnlyQuantConfig(
            block_size=cfg.block_size,
            is_symmetric=cfg.symmetric,
            accuracy_level=cfg.accuracy_level,
            bits=4,
            op_types_to_quantize=("MatMul", "Gather"),
            quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
    elif label == "ort-hqq":
        algo = HQQWeightOnlyQuantConfig(block_size=cfg.block_size, bits=4)
    else:
        algo = GPTQWeightOnlyQuantConfig(calibration_data_reader=Feeds())
        kwargs = {"block_size": cfg.block_size, "is_symmetric": cfg.symmetric, "accuracy_level": cfg.accuracy_level}
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=algo, **kwargs)
    quantizer.process()
    onnx.save_model(quantizer.model.model, str(dst))


def collapsed_weights(onnx_file: Path) -> list[str]:
    """MatMulNBits weights whose every packed byte is the same: a weight quantized to one value
    (scored as a constant). ONNX Runtime's GPTQ returned the demo LM's head so on one machine
    while the same run elsewhere did not, so the study says so rather than rank a broken graph."""
    from onnx import numpy_helper

    model = onnx.load(str(onnx_file))
    packed = {t.name: t for t in model.graph.initializer}
    names = [
        node.input[1]
        for node in model.graph.node
        if node.op_type == "MatMulNBits"
        and node.input[1] in packed
        and np.unique(numpy_helper.to_array(packed[node.input[1]])).size == 1
    ]
    return list(dict.fromkeys(names))  # one weight may feed several nodes (the head: logits, logits_all)


def _prefill_feeds(windows: list[list[int]], num_layers: int, kv_heads: int, head_dim: int) -> list[dict]:
    """The fused graph's inputs for a whole window with an empty cache (what ONNX Runtime's GPTQ runs)."""
    empty = np.zeros((1, kv_heads, 0, head_dim), np.float32)
    feeds = []
    for ids in windows:
        f = {
            "input_ids": np.array([ids], np.int64),
            "seqlens_k": np.array([len(ids) - 1], np.int32),
            "total_sequence_length": np.array(len(ids), np.int32),
        }
        for i in range(num_layers):
            f[f"past_key.{i}"] = empty
            f[f"past_value.{i}"] = empty
        feeds.append(f)
    return feeds


def run_study(entry: Path, checkpoint: Path, ppl_tokens: int = 8192) -> dict:
    """Measure every candidate against `entry`'s fp32 fused graph; returns the study (JSON-ready)."""
    from export.train_demo.corpus import load_corpus

    ckpt = load_checkpoint(checkpoint)
    model = decoder_of(ckpt)
    mcfg = model.config
    fused = entry / json.loads((entry / "kiln.json").read_text())["files"]["fused"]
    corpus = load_corpus()
    window = min(CALIBRATION_WINDOW, mcfg.max_position_embeddings)
    windows = token_windows(ckpt.tokenizer, corpus.val, mcfg.bos_token_id, window, ppl_tokens)
    base = QuantConfig()
    calib = calibration_windows(ckpt.tokenizer, corpus.train, mcfg.bos_token_id, window, base.calibration_tokens)
    weights = fused_weights(fused)
    projections = [n for n in weights if n not in (HEAD, EMBED)]
    hessians = collect_hessians(model, calib, projections)
    study: dict = {"entry": str(entry), "reference": "fp32", "candidates": {}}
    with tempfile.TemporaryDirectory(prefix="kiln-study-") as tmp:
        paths = {"fp32": fused}
        for label, (what, overrides, algo) in KILN_CANDIDATES.items():
            cfg = replace(base, **overrides)
            plan, embed = plan_weights(weights, projections, hessians, 4, algo, cfg.head_bits, mcfg, cfg)
            paths[label] = quantize_fused_graph(fused, Path(tmp) / f"{label}.onnx", plan, embed, cfg.accuracy_level)
            study["candidates"][label] = {"description": what, "config": {**cfg.to_dict(), "int4_algorithm": algo}}
        feeds = _prefill_feeds(calib, mcfg.num_layers, mcfg.num_kv_heads, mcfg.head_dim)
        for label, what in ORT_CANDIDATES.items():
            dst = Path(tmp) / f"{label}.onnx"
            _ort_quantize(fused, dst, label, base, feeds)
            paths[label] = dst
            study["candidates"][label] = {"description": what, "collapsed": collapsed_weights(dst)}
        measured = fused_quality(paths, windows, mcfg.num_layers, mcfg.num_kv_heads, mcfg.head_dim, "fp32")
        for label, path in paths.items():
            row = study["candidates"].setdefault(label, {"description": "the fp32 fused graph"})
            row.update(measured[label], size_bytes=path.stat().st_size)
            row["increase_pct"] = 100 * (measured[label]["perplexity"] / measured["fp32"]["perplexity"] - 1)
    return study


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entry", type=Path, default=Path("model_repository/demo-lm"))
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/demo-lm"))
    parser.add_argument("--out", type=Path, default=Path("runs/quant-study.json"))
    args = parser.parse_args(argv)
    study = run_study(args.entry, args.checkpoint)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(study, indent=2))
    for label, row in study["candidates"].items():
        print(
            f"{label:24s} ppl {row['perplexity']:.4f} ({row['increase_pct']:+.3f}%) KL {row['mean_kl']:.2e} "
            f"top1 {row['top1_agreement']:.4f} {row['size_bytes'] / 2**20:.2f} MB"
        )


if __name__ == "__main__":
    main()
