"""Prefill cost of a hybrid LM's prompt: the prefill graph vs. feeding the prompt token by
token through the S = 1 decode graph.

Two ~30M-parameter hybrids (random weights: cost does not depend on them), one with Mamba-1
layers (the prefill graph runs their recurrence as an ONNX `Loop` over the S tokens), one with
Mamba-2 layers (the prefill graph uses the parallel SSD form; its `Loop` variant is measured
too). A 64-token prompt, batch 1; also the prefill graph in 16-token chunks, each starting from
the previous chunk's state. Every option runs in one process, interleaved, for several rounds
(the machine is shared; the median per option is reported, with every round and the load
average). Writes the table into docs/hybrid.md between the bench markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.hybrid_graph import export_hybrid_onnx, output_names  # noqa: E402
from export.models.hybrid import HybridConfig, HybridLM  # noqa: E402
from export.models.mamba2 import Mamba2Mixer  # noqa: E402

BEGIN, END = "<!-- bench-prefill:begin -->", "<!-- bench-prefill:end -->"
COMMON = dict(
    vocab_size=4096,
    hidden_size=512,
    positions="rotary",
    state_size=16,
    num_heads=8,
    num_kv_heads=4,
    intermediate_size=1376,
    max_position_embeddings=512,
    mamba2_heads=16,
    mamba2_groups=1,
)
ARCHS = {"mamba": ",".join(["mamba,mamba,attention"] * 4), "mamba2": ",".join(["mamba2,mamba2,attention"] * 4)}


class Prompt:
    """Feeds one row through a graph from a fresh state, keeping recurrent state and KV like a runner."""

    def __init__(self, model: HybridLM, capacity: int) -> None:
        self.spec = model.state_spec()
        self.names = output_names(model)
        self.capacity = capacity

    def fresh(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        rec, kv = {}, {}
        for entry in self.spec:
            for name, shape in entry["tensors"].items():
                dims = [1, *(self.capacity if d == "positions" else d for d in shape)]
                (kv if entry["kind"] == "attention_kv" else rec)[name] = np.zeros(dims, np.float32)
        return rec, kv

    def run(self, sess: ort.InferenceSession, ids: np.ndarray, chunk: int) -> np.ndarray:
        rec, kv = self.fresh()
        done = 0
        while done < ids.shape[1]:
            toks = ids[:, done : done + chunk]
            n = toks.shape[1]
            feeds = {
                "input_ids": toks,
                "position_ids": np.arange(done, done + n)[None],
                "attention_mask": np.ones((1, done + n), np.int64),
                **{f"past_{k}": v for k, v in rec.items()},
                **{f"past_{k}": v[:, :, :done] for k, v in kv.items()},
            }
            outs = dict(zip(self.names, sess.run(None, feeds), strict=True))
            for k in rec:
                rec[k] = outs[f"present_{k}"]
            for k in kv:
                kv[k][:, :, done : done + n] = outs[f"new_{k}"]
            done += n
        return outs["logits"][0, -1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/hybrid.md"))
    args = parser.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    ids = np.random.default_rng(0).integers(3, COMMON["vocab_size"], (1, args.prompt))
    with tempfile.TemporaryDirectory(prefix="kiln-bench-hybrid-") as graphs:  # ORT holds what it loaded
        tmp = Path(graphs)
        options, params, agree = {}, {}, {}
        for arch, layers in ARCHS.items():
            torch.manual_seed(0)
            model = HybridLM(HybridConfig(layers=layers, **COMMON)).eval()
            params[arch] = sum(p.numel() for p in model.parameters())
            sess = {"prefill": ort.InferenceSession(str(export_hybrid_onnx(model, tmp / f"{arch}.onnx")), opts)}
            sess["decode"] = ort.InferenceSession(
                str(export_hybrid_onnx(model, tmp / f"{arch}.d.onnx", decode=True)), opts
            )
            if arch == "mamba2":
                Mamba2Mixer.parallel = False
                sess["loop"] = ort.InferenceSession(str(export_hybrid_onnx(model, tmp / f"{arch}.loop.onnx")), opts)
                Mamba2Mixer.parallel = True
            driver = Prompt(model, args.prompt)
            scan = "parallel SSD" if arch == "mamba2" else "Loop scan"
            opt = {
                f"{arch}: prefill graph ({scan}), one call": (sess["prefill"], args.prompt),
                f"{arch}: prefill graph ({scan}), 16-token chunks": (sess["prefill"], 16),
            }
            if "loop" in sess:
                opt[f"{arch}: prefill graph (Loop scan), one call"] = (sess["loop"], args.prompt)
            opt[f"{arch}: decode graph, token by token"] = (sess["decode"], 1)
            outs = {name: driver.run(g, ids, chunk) for name, (g, chunk) in opt.items()}  # warm-up; they agree
            first = next(iter(outs.values()))
            agree.update({name: float(np.abs(out - first).max()) for name, out in outs.items()})
            options.update({name: (lambda d=driver, g=g, c=c: d.run(g, ids, c)) for name, (g, c) in opt.items()})
    times: dict[str, list[float]] = {name: [] for name in options}
    order = list(options)
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            options[name]()
            times[name].append((time.perf_counter() - t) * 1e3)
        load.append(os.getloadavg()[0])
    result = {
        "parameters": params,
        "layers": ARCHS,
        "load_average_1min": [round(x, 2) for x in load],
        "prompt_tokens": args.prompt,
        "threads": args.threads,
        "rounds": args.rounds,
        "median_ms": {k: float(np.median(v)) for k, v in times.items()},
        "rounds_ms": {k: [round(x, 1) for x in v] for k, v in times.items()},
        "max_abs_logits_vs_first": agree,
        "cpu": platform.processor() or platform.machine(),
        "onnxruntime": ort.__version__,
    }
    print(json.dumps(result, indent=2))
    write_doc(args.out, result)


def write_doc(path: Path, r: dict) -> None:
    load = r["load_average_1min"]
    lines = [
        BEGIN,
        f"Prompt {r['prompt_tokens']} tokens, batch 1, {r['threads']} ONNX Runtime threads, onnxruntime "
        f"{r['onnxruntime']}, {r['rounds']} interleaved rounds in one process on a shared 2-core machine "
        f"(1-minute load average {min(load):.1f}-{max(load):.1f} during the run). Models: "
        + "; ".join(f"{a} {r['parameters'][a] / 1e6:.1f}M parameters (`{layers}`)" for a, layers in r["layers"].items())
        + ". Generated by `loadtests/bench_hybrid_prefill.py`.",
        "",
        "| prefill path | median ms | vs token by token | rounds (ms) | max abs Δlogits vs first row |",
        "|---|---:|---:|---|---:|",
    ]
    for name, med in r["median_ms"].items():
        base = r["median_ms"][f"{name.split(':')[0]}: decode graph, token by token"]
        rounds = ", ".join(f"{x:.0f}" for x in r["rounds_ms"][name])
        agree = r["max_abs_logits_vs_first"][name]
        lines.append(f"| {name} | {med:.1f} | {base / med:.1f}× | {rounds} | {agree:.2g} |")
    lines.append(END)
    text = path.read_text() if path.exists() else f"# Hybrid LMs\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
