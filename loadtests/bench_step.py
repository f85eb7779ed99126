"""The int4 decode step alone, Kiln beside onnxruntime-genai, paired: `make bench-step`.

bench-generate runs each case in its own process, one after another. On this shared VM two such
runs of the same case can differ by more than the gap being measured (onnxruntime-genai int4,
30M, batch 1: 481 and then 174 tok/s in two rounds of one run), and within one process the
placement of the weights in memory moved one kernel alone by a quarter (the 110M LM head,
525 against 689 µs at the 10th percentile, in two processes). So here every worker process
loads every case and interleaves their blocks in a shuffled order, and several worker processes
(each a fresh placement) are run; a ratio is the median over rounds of the paired per-round
ratios, reported as the median over processes with its range.

  kiln-int4      Kiln's default int4 export (symmetric codes, as onnxruntime-genai's builder
                 writes by default) under its runner (service/backends/ort_fused.py): the call
                 the engine makes per step
  kiln-int4-asym the same export with a zero point per block (`--quant-asymmetric`): what the
                 zero points cost (docs/quantization.md has what they buy)
  og-graph       onnxruntime-genai's int4 graph in a plain ONNX Runtime IOBinding loop like
                 Kiln's runner: the two graphs compared with the loop around them held equal
  ort-genai      onnxruntime-genai's own `generate_next_token`

A block is one prefill of every row and then STEPS decode steps; a block's figure is the median
step time after the first WARM steps. The table goes into docs/benchmarks.md (its own section).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_generate import (  # noqa: E402 - this script's own folder
    cpu_model,
    loadavg,
    make_prompts,
    prepare_model,
    run_script_worker,
    tokenizer_file,
    versions,
)
from bench_quant import prepare as prepare_quant  # noqa: E402 - this script's own folder
from bench_quant import quant_export  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASES = ("kiln-int4", "kiln-int4-asym", "og-graph", "ort-genai")
REFERENCE = "ort-genai"
COMPARISONS = (  # (case, against, what their ratio isolates)
    ("kiln-int4", "og-graph", "the graph: Kiln's against onnxruntime-genai's, both in the same kind of Python loop"),
    ("kiln-int4-asym", "kiln-int4", "the zero points: asymmetric codes against the default symmetric ones"),
    (
        "og-graph",
        "ort-genai",
        "the loop: a Python IOBinding loop against onnxruntime-genai's own generator, same graph",
    ),
)
STEPS, WARM, PROMPT_LEN = 48, 4, 32
BEGIN, END = "<!-- bench-step:begin -->", "<!-- bench-step:end -->"
HEADING = "## The int4 decode step, paired with onnxruntime-genai's"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def og_graph_block(og_dir: Path, prompts: list[list[int]], batch: int, capacity: int, threads: int) -> Callable:
    """onnxruntime-genai's graph driven like Kiln's runner: past and present bound to the same
    buffers, one binding per total length made once, the logits into a preallocated array."""
    import onnxruntime as ort

    from service.backends.ort_session import cpu_session

    decoder = json.loads((og_dir / "genai_config.json").read_text())["model"]["decoder"]
    layers, heads, dim = decoder["num_hidden_layers"], decoder["num_key_value_heads"], decoder["head_size"]
    names = decoder["inputs"]["past_key_names"], decoder["inputs"]["past_value_names"]
    outs = decoder["outputs"]["present_key_names"], decoder["outputs"]["present_value_names"]
    session = cpu_session(og_dir / decoder["filename"], threads)
    vocab = session.get_outputs()[0].shape[-1]
    shape = (batch, heads, capacity, dim)
    state = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for _ in range(2 * layers)]
    logits = ort.OrtValue.ortvalue_from_numpy(np.zeros((batch, 1, vocab), np.float32))
    step_ids = np.full((batch, 1), 5, np.int64)
    bindings: dict[int, tuple] = {}

    def bind(ids: np.ndarray, mask: np.ndarray, out: object | None) -> ort.IOBinding:
        b = session.io_binding()
        b.bind_cpu_input("input_ids", ids)
        b.bind_cpu_input("attention_mask", mask)
        for layer in range(layers):
            for kind in (0, 1):
                b.bind_ortvalue_input(names[kind] % layer, state[2 * layer + kind])
                b.bind_ortvalue_output(outs[kind] % layer, state[2 * layer + kind])
        if out is None:
            b.bind_output("logits")
        else:
            b.bind_ortvalue_output("logits", out)
        return b

    def block() -> list[float]:
        ids = np.array(prompts[:batch], np.int64)
        session.run_with_iobinding(bind(ids, np.ones(ids.shape, np.int64), None))
        times, total = [], ids.shape[1]
        for _ in range(STEPS):
            t = time.perf_counter()
            total += 1
            if total not in bindings:
                mask = np.ones((batch, total), np.int64)
                bindings[total] = (bind(step_ids, mask, logits), mask)
            session.run_with_iobinding(bindings[total][0])
            times.append(time.perf_counter() - t)
        return times

    return block


def kiln_block(entry: Path, prompts: list[list[int]], batch: int, capacity: int, threads: int) -> Callable:
    from contracts.manifest import TextManifest
    from service.backends.onnxruntime_lm import make_runner

    runner = make_runner(TextManifest.read(entry), "int4", batch, capacity, threads)
    last = np.full(batch, 5, np.int64)

    def block() -> list[float]:
        for row in range(batch):
            runner.prefill(row, prompts[row])
        times = []
        for _ in range(STEPS):
            t = time.perf_counter()
            runner.decode(last)
            times.append(time.perf_counter() - t)
        return times

    return block


def genai_block(og_dir: Path, prompts: list[list[int]], batch: int) -> Callable:
    import onnxruntime_genai as og

    model = og.Model(str(og_dir))

    def block() -> list[float]:
        params = og.GeneratorParams(model)
        length = PROMPT_LEN + STEPS + 1
        params.set_search_options(max_length=length, min_length=length, do_sample=False, batch_size=batch)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array(prompts[:batch], dtype=np.int32))
        times = []
        for _ in range(STEPS):
            t = time.perf_counter()
            gen.generate_next_token()
            times.append(time.perf_counter() - t)
        return times

    return block


def make_case(case: str, model: dict, prompts: list[list[int]], batch: int, capacity: int, threads: int) -> Callable:
    if case == "kiln-int4":
        return kiln_block(Path(model["kiln_quant_model"]), prompts, batch, capacity, threads)
    if case == "kiln-int4-asym":
        return kiln_block(Path(model["kiln_asym_model"]), prompts, batch, capacity, threads)
    if case == "og-graph":
        return og_graph_block(Path(model["ort_genai_int4"]), prompts, batch, capacity, threads)
    return genai_block(Path(model["ort_genai_int4"]), prompts, batch)


def worker(spec: dict, batches: list[int], rounds: int, threads: int, seed: int) -> dict:
    """One process: every case per batch size, `rounds` shuffled rounds; block medians in ms."""
    model, prompts = spec["model"], [p["ids"] for p in spec["prompts"]]
    capacity = PROMPT_LEN + STEPS + 8
    rng = random.Random(seed)
    out: dict = {}
    for batch in batches:
        blocks = {case: make_case(case, model, prompts, batch, capacity, threads) for case in spec["cases"]}
        for run in blocks.values():
            run()  # warm: first-call allocations and the thread pool's start
        medians: dict[str, list[float]] = {case: [] for case in blocks}
        for _ in range(rounds):
            order = list(blocks)
            rng.shuffle(order)
            for case in order:
                time.sleep(0.02)  # the previous case's spinning threads go idle first
                medians[case].append(1000 * float(np.median(blocks[case]()[WARM:])))
        out[str(batch)] = medians
        del blocks
    return out


def paired(processes: list[dict], batch: str, reference: str, case: str) -> dict:
    """reference / case step time: per process the median of the per-round ratios (above 1: the
    case is faster), then their median and range over processes."""
    per_process = [float(np.median(np.array(p[batch][reference]) / np.array(p[batch][case]))) for p in processes]
    return {"median": float(np.median(per_process)), "min": min(per_process), "max": max(per_process)}


def summarize(processes: list[dict], cases: list[str]) -> dict:
    """Per batch: each case's median step (ms, over every block of every process), its speed
    against onnxruntime-genai, and the COMPARISONS whose two cases ran."""
    out: dict = {}
    for batch in processes[0]:
        row: dict = {"ms": {}, "speed": {}, "isolated": {}}
        for case in cases:
            row["ms"][case] = float(np.median([m for p in processes for m in p[batch][case]]))
            if case != REFERENCE:
                row["speed"][case] = paired(processes, batch, REFERENCE, case)
        for case, against, _ in COMPARISONS:
            if case in cases and against in cases:
                row["isolated"][f"{case} vs {against}"] = paired(processes, batch, against, case)
        out[int(batch)] = row
    return out


def _ratio(s: dict) -> str:
    return f"{s['median']:.2f}× [{s['min']:.2f}–{s['max']:.2f}]"


def render(meta: dict, summaries: dict[str, dict], cases: list[str]) -> str:
    lines = [
        f"Written by `make bench-step` on {meta['date']}, one run: {meta['processes']} worker processes × "
        f"{meta['rounds']} rounds, each round every case once in a shuffled order, a block being a prefill of "
        f"{PROMPT_LEN} tokens per row and {STEPS} decode steps (median after the first {WARM}). {meta['cpu']}; "
        f"{meta['threads']} intra-op threads; onnxruntime {meta['versions'].get('onnxruntime')}, onnxruntime-genai "
        f"{meta['versions'].get('onnxruntime-genai')}; load average {meta['load_before']} before, "
        f"{meta['load_after']} after.",
        "",
        "Speed against onnxruntime-genai: its step time over the case's, paired per round; the median "
        "over processes, with the range over processes in brackets (above 1.00×: faster than onnxruntime-genai).",
        "",
    ]
    others = [c for c in cases if c != REFERENCE]
    head = ["model", "batch", *[f"{c} ms" for c in cases], *[f"{c} speed" for c in others]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, summary in summaries.items():
        for batch, row in summary.items():
            cells = [name, str(batch), *[f"{row['ms'][c]:.3f}" for c in cases]]
            cells += [_ratio(row["speed"][c]) for c in others]
            lines.append("| " + " | ".join(cells) + " |")
    shown = [(f"{c} vs {a}", what) for c, a, what in COMPARISONS if c in cases and a in cases]
    if shown:
        lines += [
            "",
            "What each pair of cases isolates (the first's speed over the second's, paired the same way):",
            "",
        ]
        lines += [f"- {name}: {what}" for name, what in shown]
        lines += ["", "| model | batch | " + " | ".join(n for n, _ in shown) + " |", "|---|---|" + "---|" * len(shown)]
        for model, summary in summaries.items():
            for batch, row in summary.items():
                cells = [model, str(batch), *[_ratio(row["isolated"][n]) for n, _ in shown]]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_worker(spec_file: Path, batches: list[int], rounds: int, threads: int, seed: int) -> dict:
    args = ["--worker", str(spec_file), "--seed", str(seed), "--batches", ",".join(map(str, batches))]
    args += ["--rounds", str(rounds), "--threads", str(threads)]
    return run_script_worker(Path(__file__).resolve(), args, threads, "bench-step worker")


def prepare(name: str, workdir: Path, threads: int, cases: list[str]) -> dict:
    """The checkpoint and every case's model, built as bench-generate builds them (reused there)."""
    from export.quant.config import QuantConfig

    model = prepare_model(name, workdir, threads, ort_genai=False)
    model.update(prepare_quant(model, workdir, threads, ["kiln-int4", "ort-genai-int4"], log))
    if "kiln-int4-asym" in cases:
        entry, _ = quant_export(
            Path(model["hf"]),
            workdir / name / "kiln_asym_repo",
            f"bench-{name.lower()}",
            QuantConfig(symmetric=False),
            log,
        )
        model["kiln_asym_model"] = str(entry)
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="30M,110M,qwen2-110M")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default="runs/bench-step")
    p.add_argument("--out", help="the page to write the section into (docs/benchmarks.md)")
    p.add_argument("--json", help="also write every process's block medians and the summaries here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        print(json.dumps(worker(spec, batches, args.rounds, args.threads, args.seed)))
        return
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown or REFERENCE not in cases:
        raise SystemExit(f"cases: {unknown or 'no ' + REFERENCE} (known: {', '.join(CASES)}; {REFERENCE} is required)")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    meta = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(), "versions": versions()}
    meta.update(processes=args.processes, rounds=args.rounds, threads=args.threads)
    summaries: dict[str, dict] = {}
    raw: dict[str, list[dict]] = {}
    models = [m for m in args.models.split(",") if m]
    specs = {}
    for name in models:  # every build before any timing: an export's threads disturb nothing measured
        log(f"[{name}] preparing the models")
        model = prepare(name, workdir, args.threads, cases)
        prompts = make_prompts(tokenizer_file(workdir), max(batches), PROMPT_LEN)
        spec_file = workdir / name / "step-spec.json"
        spec_file.write_text(json.dumps({"model": model, "prompts": prompts, "cases": cases}))
        specs[name] = spec_file
    meta["load_before"] = loadavg()
    for name, spec_file in specs.items():
        processes = []
        for i in range(args.processes):
            log(f"[{name}] worker process {i + 1}/{args.processes}")
            processes.append(run_worker(spec_file, batches, args.rounds, args.threads, seed=i))
        raw[name] = processes
        summaries[name] = summarize(processes, cases)
        for batch, row in summaries[name].items():
            log(f"    b{batch}: " + ", ".join(f"{c} {v['median']:.2f}×" for c, v in row["speed"].items()))
    meta["load_after"] = loadavg()
    text = render(meta, summaries, cases)
    print(text)
    if args.out:
        from export.vision.evaluate import write_section

        write_section(Path(args.out), BEGIN, END, text, heading=HEADING)
        log(f"wrote {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "processes": raw, "summaries": summaries}, indent=1))


if __name__ == "__main__":
    main()
