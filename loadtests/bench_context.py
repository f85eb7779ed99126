"""Decode cost against context length: a Mamba, a hybrid and a Llama of about equal size.

Attention reads every cached position per new token, so its decode step grows with the
context; a Mamba layer reads a fixed-size state. This measures what the served runners do: each
model is exported by `kiln export` (random weights: the cost does not depend on them) and run
through `make_runner` — the fused runner (GroupQueryAttention) for Llama, the hybrid runner for
the others — with rows holding 64, 256, 1024 and 2048 positions, batch 1 and 8.

Rows are filled by setting their lengths, not by prefilling 2048 real tokens per row: which
values the cache holds does not change what a step computes, and prefilling a Mamba-1 row of
2048 tokens would take longer than the whole measurement. Every (model, context, batch) case
runs in one process, interleaved, for several rounds; the table gives the median ms per decode
step (one new token for each of the batch's rows). Writes its section of docs/benchmarks.md
between the bench-context markers (`make bench-context`).
"""

from __future__ import annotations

import argparse
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

from contracts.manifest import TextManifest  # noqa: E402
from export.checkpoint import save_checkpoint  # noqa: E402
from export.models.hybrid import HybridConfig, HybridLM  # noqa: E402
from export.models.llama import LlamaConfig, LlamaLM  # noqa: E402
from export.pipeline import export_checkpoint  # noqa: E402
from export.tokenizer import train_tokenizer  # noqa: E402
from export.vision.evaluate import write_section  # noqa: E402
from service.backends.onnxruntime_lm import make_runner  # noqa: E402
from service.backends.ort_standard import StandardRunner  # noqa: E402

BEGIN, END = "<!-- bench-context:begin -->", "<!-- bench-context:end -->"
CONTEXTS = (64, 256, 1024, 2048)
BATCHES = (1, 8)
VOCAB = 4096
POSITIONS = 4096
ATTENTION = dict(num_heads=8, num_kv_heads=4, intermediate_size=1376)
# About 26M parameters each (the tied 4096 x 512 embedding included).
MODELS = {
    "llama": dict(hidden_size=512, num_layers=8, **ATTENTION),
    "mamba": dict(hidden_size=512, layers=",".join(["mamba"] * 14), state_size=16),
    "hybrid": dict(
        hidden_size=512,
        layers=",".join(["mamba2,mamba2,attention"] * 4),
        state_size=16,
        mamba2_heads=16,
        mamba2_groups=1,
        **ATTENTION,
    ),
}
# --quick (the smoke test): the same layouts, tiny.
TINY = dict(hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128)
QUICK = {
    "llama": dict(TINY, num_layers=2),
    "mamba": dict(hidden_size=64, layers="mamba,mamba", state_size=8),
    "hybrid": dict(TINY, layers="mamba2,attention", state_size=8, mamba2_heads=4, mamba2_groups=1),
}


def build(name: str, config: dict, workdir: Path, tokenizer) -> tuple[TextManifest, int]:  # type: ignore[no-untyped-def]
    """Export one model through the real pipeline; its manifest and parameter count."""
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, max_position_embeddings=POSITIONS)
    if name == "llama":
        model: LlamaLM | HybridLM = LlamaLM(LlamaConfig(**common, **config))
    else:
        model = HybridLM(HybridConfig(**common, **config))
    ckpt = save_checkpoint(model.eval(), tokenizer, workdir / name / "ckpt")
    repo = workdir / name / "repo"
    export_checkpoint(ckpt, repo, name, variants=False, val_texts=["def f(x):\n    return x\n"], ppl_tokens=32)
    return TextManifest.read(repo / name), sum(p.numel() for p in model.parameters())


class Case:
    """One model at one batch size: rows held at a given context, one decode step timed."""

    def __init__(self, manifest: TextManifest, batch: int, threads: int) -> None:
        self.runner = make_runner(manifest, "fused", batch, max(CONTEXTS) + 64, threads)
        self.tokens = np.full(batch, 5, np.int64)
        self.batch = batch

    def step_ms(self, context: int, steps: int) -> float:
        """Median of `steps` decode steps with every row starting at `context` positions."""
        runner = self.runner
        lengths = runner.state.lengths
        if isinstance(runner, StandardRunner):  # lay the rows out for this context while they are empty
            runner.state.set_capacity(runner.capacity_for(context + steps + 2))
        lengths[: self.batch] = context
        runner.decode(self.tokens)  # not timed: the first step after a re-layout
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            runner.decode(self.tokens)
            times.append((time.perf_counter() - t) * 1e3)
        lengths[: self.batch] = 0
        return float(np.median(times))


def crossover(ms: dict[int, float], llama: dict[int, float]) -> str:
    """The shortest measured context at which a model's step is cheaper than Llama's."""
    cheaper = [c for c in CONTEXTS if ms[c] < llama[c]]
    return f"{cheaper[0]}" if cheaper else f"not up to {max(CONTEXTS)}"


def render(r: dict) -> str:
    load = r["load"]
    lines = [
        f"Decode ms per step (one new token for every row) against the positions each row holds; "
        f"median of {r['steps']} steps per round, {r['rounds']} interleaved rounds, "
        f"{r['threads']} ONNX Runtime threads, onnxruntime {r['onnxruntime']}, {r['cpu']}, shared "
        f"2-core machine (1-minute load average {min(load):.1f}-{max(load):.1f} during the run). "
        "Random weights (the cost does not depend on them); rows are filled by length, not prefilled. "
        "Llama runs on the fused runner (GroupQueryAttention), Mamba and the hybrid on the hybrid runner. "
        "Generated by `loadtests/bench_context.py` (`make bench-context`).",
        "",
        "| model | layers | parameters | batch | "
        + " | ".join(f"{c} ms" for c in CONTEXTS)
        + f" | {max(CONTEXTS)} / {min(CONTEXTS)} | cheaper than Llama from |",
        "|---|---|---:|---:|" + "---:|" * len(CONTEXTS) + "---:|---|",
    ]
    for name, info in r["models"].items():
        for batch in BATCHES:
            ms = {int(c): v for c, v in r["ms"][name][str(batch)].items()}
            llama = {int(c): v for c, v in r["ms"]["llama"][str(batch)].items()}
            growth = ms[max(CONTEXTS)] / ms[min(CONTEXTS)]
            cross = "—" if name == "llama" else crossover(ms, llama)
            cells = " | ".join(f"{ms[c]:.2f}" for c in CONTEXTS)
            lines.append(
                f"| {name} | {info['layers']} | {info['parameters'] / 1e6:.1f}M | {batch} | {cells} | "
                f"{growth:.2f}× | {cross} |"
            )
    flat = {
        b: r["ms"]["mamba"][str(b)][str(max(CONTEXTS))] / r["ms"]["mamba"][str(b)][str(min(CONTEXTS))] for b in BATCHES
    }
    verdict = "met" if max(flat.values()) <= 1.1 else "missed"
    lines += [
        "",
        f"Target: Mamba's step stays flat, ≤ 1.1× from {min(CONTEXTS)} to {max(CONTEXTS)} positions: "
        + ", ".join(f"batch {b} {flat[b]:.2f}×" for b in BATCHES)
        + f" ({verdict}).",
    ]
    return "\n".join(lines)


def layer_summary(name: str, config: dict) -> str:
    if name == "llama":
        return f"{config['num_layers']} × attention"
    kinds = config["layers"].split(",")
    return ", ".join(f"{kinds.count(k)} × {k}" for k in dict.fromkeys(kinds))


def measure(configs: dict, args: argparse.Namespace, workdir: Path) -> dict:
    """Export each model under `workdir` and time its decode step at every context length, rounds interleaved."""
    from export.train_demo.corpus import load_corpus

    tokenizer = train_tokenizer(load_corpus().train[:200], vocab_size=VOCAB)
    models, cases = {}, {}
    for name, config in configs.items():
        print(f"[{name}] export", flush=True)
        manifest, params = build(name, config, workdir, tokenizer)
        models[name] = {"parameters": params, "layers": layer_summary(name, config)}
        for batch in BATCHES:
            cases[(name, batch)] = Case(manifest, batch, args.threads)
    ms: dict[tuple[str, int, int], list[float]] = {(n, b, c): [] for (n, b) in cases for c in CONTEXTS}
    order = list(ms)
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for name, batch, context in order if r % 2 == 0 else order[::-1]:
            ms[(name, batch, context)].append(cases[(name, batch)].step_ms(context, args.steps))
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.rounds} done (load {load[-1]:.1f})", flush=True)
    return {
        "models": models,
        "ms": {
            n: {str(b): {str(c): float(np.median(ms[(n, b, c)])) for c in CONTEXTS} for b in BATCHES} for n in MODELS
        },
        "load": load,
        "rounds": args.rounds,
        "steps": args.steps,
        "threads": args.threads,
        "onnxruntime": ort.__version__,
        "cpu": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--quick", action="store_true", help="tiny models, one round: a smoke run")
    args = parser.parse_args(argv)
    configs = QUICK if args.quick else MODELS
    if args.quick:
        args.rounds, args.steps = 1, 1

    with tempfile.TemporaryDirectory(prefix="kiln-bench-context-") as workdir:
        result = measure(configs, args, Path(workdir))
    text = render(result)
    print(text)
    write_section(args.out, BEGIN, END, text, heading="## Context length")


if __name__ == "__main__":
    main()
