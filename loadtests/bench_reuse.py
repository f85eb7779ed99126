"""Prefix caching and n-gram speculative decoding, each on against off, in one run (issue 15).

Measured on the real engine in-process: `build_text_engine` with an `EngineConfig`, as the
gateway builds it, requests submitted straight to it and timed where the engine emits their
tokens. Not over HTTP: both features change what the engine computes (how many prompt tokens
a prefill runs, how many tokens a step yields), and in-process nothing else — the event loop,
SSE framing, a client sharing the two cores — sits in the timings that the on/off ratios compare.

Two models: the trained demo LM (`make export`; its output means something, so what n-gram
lookup guesses is really confirmed or not) and the random-weight 110M Llama configuration of
`bench_generate.py` (its cost is real; its acceptance says only what random weights repeat).
Per model, engines with the server's defaults otherwise: prefix cache on (speculation off),
both off, and one with the prefix cache off (each speculative request prefills alike) whose
speculation `case_spec` switches off and on, each prompt both ways back to back. Every case
runs in every round, interleaved (odd rounds backwards); each case's requests run one at a
time, batch 1, greedy, EOS ignored. Prompts: loadtests/reuse_workload.py.

    python loadtests/bench_reuse.py --out docs/benchmarks.md     # make bench-reuse
    python loadtests/bench_reuse.py --quick --out /tmp/b.md      # tiny models, one round
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_generate import MODELS, cpu_model, loadavg, prepare_model, versions  # noqa: E402 - this folder
from reuse_workload import FULL, KINDS, QUICK, Counts, Profile, Prompts, run  # noqa: E402

from contracts.engine import EngineConfig  # noqa: E402
from contracts.manifest import TextManifest  # noqa: E402
from export.vision.evaluate import write_section  # noqa: E402
from service.engine.build import build_text_engine  # noqa: E402
from service.engine.engine import GenerationEngine  # noqa: E402
from service.engine.speculative import SpecConfig  # noqa: E402

BEGIN, END = "<!-- bench-reuse:begin -->", "<!-- bench-reuse:end -->"
HEADING = "## Prefix caching and speculative decoding"
ENGINES = {  # name: (prefix cache, speculation); "host" also has the host tier (KILN_PREFIX_CACHE_BYTES)
    "cache": (True, "off"),
    "plain": (False, "off"),
    "spec": (False, "ngram"),
    "slots": (True, "off"),  # the many-prompts case's own, so it never evicts the other cases' prefixes
    "host": (True, "off"),
}
TTFT_TARGET, GROUNDED_TARGET, OPEN_TARGET = 0.15, 1.5, 0.95


@dataclass
class Model:
    name: str
    about: str
    prompts: Prompts
    engines: dict[str, GenerationEngine]
    counts: dict[str, Counts]
    spec_prompts: dict[str, list[list[int]]]
    guess: SpecConfig  # the "spec" engine's speculation, switched off and on by case_spec


def load(name: str, entry: Path, about: str, threads: int, profile: Profile) -> Model:
    from tokenizers import Tokenizer

    manifest = TextManifest.read(entry)
    tok = Tokenizer.from_file(str(manifest.path(manifest.tokenizer)))
    engines, counts = {}, {}
    for kind, (cache, guess) in ENGINES.items():
        host = 0
        if kind == "host":  # a host row per system prompt of the many-prompts case
            slots = engines["cache"].runner
            host = slots.state.nbytes // slots.max_batch * profile.tenants
        config = EngineConfig(
            intra_op_threads=threads,
            prefix_cache=cache,
            speculative=guess,  # type: ignore[arg-type]
            prefix_cache_bytes=host,
        )
        counts[kind] = Counts()
        engines[kind] = build_text_engine(manifest, config, lambda ids: tok.decode(list(ids)), counts[kind])
        engines[kind].start()
    bos = [manifest.bos_token_id] if manifest.add_bos else []
    prompts = Prompts(lambda text: tok.encode(text, add_special_tokens=False).ids, bos, profile)
    for engine in engines.values():  # the long prefill's first call, untimed; primes the cache
        run(engine, prompts.primer(), 2)
    if engines["cache"].cache is None:
        raise SystemExit(f"{name}: its runner reuses no prefixes (KILN_LM_VARIANT graph {manifest.files})")

    def own(prompt: list[int]) -> list[int]:
        return run(engines["plain"], prompt, profile.new).tokens

    spec = {k: [prompts.spec(k, i, own) for i in range(profile.functions)] for k in KINDS}
    limit = engines["plain"].runner.max_seq_len
    if max(len(p) for ps in spec.values() for p in ps) + profile.new > limit:
        raise SystemExit(f"{name}: a speculative prompt + {profile.new} new tokens exceed {limit} positions")
    guess = engines["spec"].spec
    if guess is None:
        raise SystemExit(
            f"{name}: its runner cannot verify a guess in one call (KILN_LM_VARIANT graph {manifest.files})"
        )
    return Model(name, about, prompts, engines, counts, spec, guess)


def describe(manifest_dir: Path, weights: str) -> str:
    manifest = TextManifest.read(manifest_dir)
    arch, vocab = manifest.architecture, manifest.vocab_size
    return (
        f"{arch.get('family', 'llama')}, hidden {arch.get('hidden_size')}, {arch.get('num_layers')} layers, "
        f"{arch.get('num_heads')} heads ({arch.get('num_kv_heads')} KV), vocab {vocab}, {weights}"
    )


# ---- cases: each runs once per round and appends what it measured ------------------------------
def case_prefix(m: Model, setting: str, rnd: int, raw: dict) -> None:
    out = raw["prefix"].setdefault(m.name, {"off": [], "on": [], "cached": [], "prompt": 0})
    engine = m.engines["cache" if setting == "on" else "plain"]
    for i in range(m.prompts.p.requests):
        prompt = m.prompts.system_request(rnd, i)
        r = run(engine, prompt, 2)
        out[setting].append(r.ttft * 1000)
        out["prompt"] = len(prompt)
        if setting == "on":
            out["cached"].append(r.cached)


def case_tenants(m: Model, setting: str, rnd: int, raw: dict) -> None:
    """More system prompts than slots, in turn: the slots alone (their LRU has always just dropped
    the next one) against slots + host tier, each on an engine of its own."""
    out = raw["tenants"].setdefault(
        m.name, {"off": [], "on": [], "cached_off": [], "cached_on": [], "tokens": {}, "primed": set()}
    )
    engine = m.engines["host" if setting == "on" else "slots"]
    if setting not in out["primed"]:  # every system prompt seen once, untimed, as a server would have
        for j in range(m.prompts.p.tenants):
            run(engine, m.prompts.tenant_primer(j), 2)
        out["primed"].add(setting)
    for j in range(m.prompts.p.tenants):
        prompt = m.prompts.tenant_request(rnd, j)
        r = run(engine, prompt, 2)
        out[setting].append(r.ttft * 1000)
        out[f"cached_{setting}"].append(r.cached)
        out["tokens"][(setting, rnd, j)] = r.tokens
    out["prompt"] = len(prompt)


def case_chat(m: Model, setting: str, rnd: int, raw: dict) -> None:
    out = raw["chat"].setdefault(m.name, {"off": [], "on": [], "cached": [], "prompt": [], "replies": {}})
    engine = m.engines["cache" if setting == "on" else "plain"]
    history: list[int] = []
    ttft, cached, lengths, replies = [], [], [], []
    for turn in range(m.prompts.p.turns):
        prompt = m.prompts.chat_turn(history, rnd, turn)
        r = run(engine, prompt, m.prompts.p.reply)
        ttft.append(r.ttft * 1000)
        cached.append(r.cached)
        lengths.append(len(prompt))
        replies.append(r.tokens)
        history = prompt + r.tokens
    out[setting].append(ttft)
    out["replies"][(setting, rnd)] = replies
    if setting == "on":
        out["cached"].append(cached)
    out["prompt"] = lengths


def case_spec(m: Model, kind: str, rnd: int, raw: dict) -> None:
    """Each prompt decoded with speculation off and on back to back, on one engine whose `spec` is
    switched in between (which of the two goes first alternates by prompt and round). Not two
    engines: those are two ONNX Runtime sessions with their own weights, KV buffers and threads,
    and measured in turn the demo LM's steps ran 20-60% slower on whichever session had not just
    run; one session is what a server switches between, and what the ratio should compare.
    The same prompts every round: greedy output must not change between rounds either."""
    out = raw["spec"].setdefault(m.name, {}).setdefault(kind, {"off": [], "on": [], "outputs": {}, "counts": {}})
    engine, counts = m.engines["spec"], m.counts["spec"]
    before = counts.snapshot()
    tokens, seconds, decode_s = {"off": 0, "on": 0}, {"off": 0.0, "on": 0.0}, {"off": 0.0, "on": 0.0}
    try:
        for i, prompt in enumerate(m.spec_prompts[kind]):
            for setting in ("off", "on") if (i + rnd) % 2 == 0 else ("on", "off"):
                engine.spec = m.guess if setting == "on" else None
                r = run(engine, prompt, m.prompts.p.new)
                tokens[setting] += len(r.tokens)
                seconds[setting] += r.total
                decode_s[setting] += r.total - r.ttft
                out["outputs"].setdefault((setting, i), r.tokens)
                if out["outputs"][(setting, i)] != r.tokens:
                    out["outputs"][(setting, i)] = None  # greedy output changed between rounds
    finally:
        engine.spec = m.guess
    prompts = len(m.spec_prompts[kind])
    for setting in ("off", "on"):
        decode_tok_s = (tokens[setting] - prompts) / decode_s[setting]
        out[setting].append({"tok_s": tokens[setting] / seconds[setting], "decode_tok_s": decode_tok_s})
    after = counts.snapshot()
    for key in ("steps", "proposed", "accepted"):  # only the "on" runs guess
        out["counts"][key] = out["counts"].get(key, 0) + after[key] - before[key]


def cases(models: list[Model], raw: dict) -> list[Callable[[int], None]]:
    """Every case of every model, each a call taking the round's index and filling `raw`."""
    out: list[Callable[[int], None]] = []
    for m in models:
        for s in ("off", "on"):
            out += [partial(case_prefix, m, s, raw=raw), partial(case_chat, m, s, raw=raw)]
            out.append(partial(case_tenants, m, s, raw=raw))
        out += [partial(case_spec, m, k, raw=raw) for k in KINDS]
    return out


# ---- report ---------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def ratio_ok(value: float, target: float, at_most: bool) -> str:
    return "met" if (value <= target if at_most else value >= target) else "**missed**"


def render(raw: dict, meta: dict, models: list[Model]) -> str:
    p: Profile = meta["profile"]
    lines = [
        f"Generated by `make bench-reuse` (`loadtests/bench_reuse.py`, issue 15) on {meta['date']}: every number "
        f"below comes from that one run. {meta['rounds']} interleaved rounds after {meta['warmup']} untimed "
        f"one(s), {meta['threads']} ONNX Runtime "
        f"threads, real engines in-process (server defaults: {meta['slots']} slots of up to {meta['positions']} "
        f"positions, fused graph), batch 1, greedy, EOS ignored. {meta['cpu']}, {os.cpu_count()} logical cores; "
        f"1-minute load average {meta['load_before']} before, {meta['load_after']} after. Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + ". Prompts are held-out Python standard library code (`loadtests/reuse_workload.py`).",
        "",
    ]
    lines += [f"- **{m.name}**: {m.about}" for m in models]
    lines += [
        "",
        f"**Time to first token, shared system prompt**: {p.system} tokens of system prompt, then a different "
        f"{p.suffix}-token user suffix per request ({p.requests} per round), each request alone on an idle "
        "engine; cache on: the system prompt is already cached (one earlier request primed it, untimed).",
        "",
        "| model | prompt tokens | requests | cached tokens per hit | TTFT p50 / p99 ms, off "
        "| TTFT p50 / p99 ms, on | on / off p50 | on / off p99 | target ≤ 0.15× (p50) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in raw["prefix"].items():
        off50, off99, on50, on99 = pct(r["off"], 50), pct(r["off"], 99), pct(r["on"], 50), pct(r["on"], 99)
        hits = f"{min(r['cached'])}–{max(r['cached'])}" if min(r["cached"]) != max(r["cached"]) else str(r["cached"][0])
        lines.append(
            f"| {name} | {r['prompt']} | {len(r['on'])} | {hits} | {off50:.2f} / {off99:.2f} | {on50:.2f} / "
            f"{on99:.2f} | {on50 / off50:.3f}× | {on99 / off99:.3f}× | {ratio_ok(on50 / off50, TTFT_TARGET, True)} |"
        )
    host = models[0].engines["host"]
    rows = len(host.host.rows) if host.host is not None else 0
    lines += [
        "",
        f"**More system prompts than slots**: {p.tenants} different {p.system}-token system prompts (twice the "
        f"{meta['slots']} slots), requested in turn, each request with its own {p.suffix}-token suffix, alone on the "
        f"engine. Slots only (`KILN_PREFIX_CACHE`, the default): the least recently used slot is always the prompt "
        f"that comes next. Host tier: `KILN_PREFIX_CACHE_BYTES` = {rows} host rows of one slot's size "
        f"({meta['host_mb']:.0f} MB for {models[0].name}, {meta['host_mb_large']:.0f} MB for {models[-1].name}).",
        "",
        "| model | system prompts | prompt tokens | requests | cached tokens, slots only / host tier (median) "
        "| TTFT p50 / p99 ms, slots only | TTFT p50 / p99 ms, host tier | host / slots p50 | host / slots p99 "
        "| first tokens identical |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in raw["tenants"].items():
        off50, off99, on50, on99 = pct(r["off"], 50), pct(r["off"], 99), pct(r["on"], 50), pct(r["on"], 99)
        keys = {k[1:] for k in r["tokens"]}
        same = all(r["tokens"][("on", *k)] == r["tokens"][("off", *k)] for k in keys)
        lines.append(
            f"| {name} | {p.tenants} | {r['prompt']} | {len(r['on'])} | {statistics.median(r['cached_off']):.0f} / "
            f"{statistics.median(r['cached_on']):.0f} | {off50:.2f} / {off99:.2f} | {on50:.2f} / {on99:.2f} | "
            f"{on50 / off50:.3f}× | {on99 / off99:.3f}× | {'yes' if same else '**NO**'} |"
        )
    lines += [
        "",
        f"**Multi-turn chat replay**: a {p.chat_system}-token system prompt, {p.turns} turns; each turn's prompt "
        f"is the previous turn's prompt + the model's {p.reply}-token reply + a {p.user}-token user message. A new "
        "conversation each round (same system prompt). TTFT per turn: median over the rounds.",
        "",
        "| model | turn | prompt tokens | cached tokens (on) | TTFT ms, off | TTFT ms, on | on / off |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in raw["chat"].items():
        for t in range(p.turns):
            off = statistics.median(x[t] for x in r["off"])
            on = statistics.median(x[t] for x in r["on"])
            cached = statistics.median(x[t] for x in r["cached"])
            lines.append(
                f"| {name} | {t + 1} | {r['prompt'][t]} | {cached:.0f} | {off:.2f} | {on:.2f} | {on / off:.3f}× |"
            )
    same = {
        n: all(r["replies"][("on", k)] == r["replies"][("off", k)] for _, k in r["replies"])
        for n, r in raw["chat"].items()
    }
    lines += [
        "",
        "Replies token-identical with and without the cache: "
        + ", ".join(f"{n} {'yes' if ok else '**NO**'}" for n, ok in same.items())
        + ".",
    ]
    lines += [
        "",
        f"**Speculative decoding** (n-gram prompt lookup, k = {meta['spec_tokens']}, n-grams "
        f"{meta['ngram_min']}–{meta['ngram_max']}): {p.functions} prompt(s) per kind, {p.new} new tokens each, "
        "each prompt decoded off and on back to back by one engine (which goes first alternates). "
        "tok/s: generated tokens ÷ time from submit to the last token (prefill included), median over the rounds; "
        "decode tok/s: tokens after the first ÷ time from the first token to the last. Acceptance: guessed tokens "
        "the model confirmed ÷ guessed; mean accepted: confirmed tokens per verify call (each call also yields the "
        "model's own next token).",
        "",
        "| model | prompts | tok/s off | tok/s on | on / off | decode tok/s off / on | decode on / off "
        "| verify calls | proposed | accepted | acceptance | mean accepted | output identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for name, kinds in raw["spec"].items():
        for kind, r in kinds.items():
            off = statistics.median(x["tok_s"] for x in r["off"])
            on = statistics.median(x["tok_s"] for x in r["on"])
            d_off = statistics.median(x["decode_tok_s"] for x in r["off"])
            d_on = statistics.median(x["decode_tok_s"] for x in r["on"])
            c = r["counts"]
            rate = f"{c['accepted'] / c['proposed']:.0%}" if c["proposed"] else "—"
            mean = f"{c['accepted'] / c['steps']:.2f}" if c["steps"] else "—"
            keys = {k for _, k in r["outputs"]}
            identical = all(
                r["outputs"][("on", k)] is not None and r["outputs"][("on", k)] == r["outputs"][("off", k)]
                for k in keys
            )
            lines.append(
                f"| {name} | {kind} | {off:.1f} | {on:.1f} | {on / off:.2f}× | {d_off:.1f} / {d_on:.1f} | "
                f"{d_on / d_off:.2f}× | {c['steps']} | {c['proposed']} | {c['accepted']} | {rate} | {mean} "
                f"| {'yes' if identical else '**NO**'} |"
            )
            if name == models[0].name and kind in ("grounded", "open-ended"):
                target = GROUNDED_TARGET if kind == "grounded" else OPEN_TARGET
                verdicts.append(f"{kind} {on / off:.2f}× (target ≥ {target}×: {ratio_ok(on / off, target, False)})")
    lines += ["", f"Targets for {models[0].name}, tok/s on ÷ off: " + "; ".join(verdicts) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository", help="holds the demo LM")
    ap.add_argument("--name", default="demo-lm", help="the trained model's entry in --repository")
    ap.add_argument("--large", default=None, help=f"bench_generate's random-weight config ({', '.join(MODELS)})")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (quick: 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the built random-weight model here")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    ap.add_argument("--quick", action="store_true", help="tiny models, short prompts, one round: a smoke run")
    args = ap.parse_args(argv)
    profile = QUICK if args.quick else FULL
    args.large = args.large or ("tiny" if args.quick else "110M")
    if args.quick:
        args.rounds, args.warmup = 1, 0
    entry = args.repository / args.name
    if not (entry / "kiln.json").exists():
        raise SystemExit(f"{entry}/kiln.json not found: export the demo LM first (`make export`)")
    meta: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "load_before": loadavg()}
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="kiln-bench-reuse-")
    workdir = args.workdir or Path(tmp.name)  # type: ignore[union-attr]
    models: list[Model] = []
    try:
        print(f"[{args.name}] engines", file=sys.stderr, flush=True)
        models.append(load(args.name, entry, describe(entry, "trained (`kiln train-demo`)"), args.threads, profile))
        print(f"[{args.large}] building the random-weight model", file=sys.stderr, flush=True)
        big = prepare_model(args.large, workdir, args.threads, ort_genai=False)
        about = describe(Path(big["kiln_model"]), f"random weights, {big['params'] / 1e6:.1f}M parameters")
        models.append(load(args.large, Path(big["kiln_model"]), about, args.threads, profile))
        for _ in range(args.warmup):  # untimed: every shape's first call, every slot's first use
            for case in cases(models, {"prefix": {}, "chat": {}, "spec": {}, "tenants": {}}):
                case(args.rounds)  # a round index of its own: its prompts are none of the measured ones
        raw: dict = {"prefix": {}, "chat": {}, "spec": {}, "tenants": {}}
        order = cases(models, raw)
        for rnd in range(args.rounds):
            for case in order if rnd % 2 == 0 else order[::-1]:
                case(rnd)
            print(f"round {rnd + 1}/{args.rounds} done (load {loadavg()})", file=sys.stderr, flush=True)
        plain = models[0].engines["plain"].runner
        spec = EngineConfig()
        host_mb = [m.engines["host"].runner.parking.nbytes / 2**20 for m in (models[0], models[-1])]  # type: ignore[union-attr]
        meta.update(host_mb=host_mb[0], host_mb_large=host_mb[1])
        meta.update(
            load_after=loadavg(), rounds=args.rounds, warmup=args.warmup, threads=args.threads, profile=profile,
            cpu=cpu_model(), versions=versions(), slots=plain.max_batch, positions=plain.max_seq_len,
            spec_tokens=spec.spec_tokens, ngram_min=spec.spec_ngram_min, ngram_max=spec.spec_ngram_max,
        )  # fmt: skip
        text = render(raw, meta, models)
    finally:
        for m in models:
            for engine in m.engines.values():
                engine.stop()
        if tmp is not None:
            tmp.cleanup()
    print(text)
    write_section(args.out, BEGIN, END, text, heading=HEADING)


if __name__ == "__main__":
    main()
