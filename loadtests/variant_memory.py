"""Resident memory of the served runner per LM variant (issue 14), each in a fresh process.

    python loadtests/variant_memory.py --entry model_repository/demo-lm --out runs/variant-memory.json
    python loadtests/variant_memory.py --bench-model 30M --workdir /tmp/kiln-bench --out runs/variant-memory-30m.json

`--bench-model` first builds (or reuses, in `--workdir`) that model of the generation benchmark
and its Kiln export with the quantized variants, as `bench_generate.py` does, and measures it.

For each variant the worker imports the runner, records VmRSS, builds `make_runner` exactly as
the gateway does (Settings' max_batch / max_seq_len unless given; the KV cache is preallocated
and touched at start-up), prefills one prompt and decodes a few tokens, then records VmRSS and
the peak (VmHWM). The weights' share is the growth minus the KV cache, which every variant has
alike. No timing is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fp32", "fused", "int8", "int4")


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def worker(entry: Path, variant: str, max_batch: int, max_seq_len: int, threads: int) -> dict:
    import numpy as np

    from contracts.manifest import TextManifest
    from service.backends.onnxruntime_lm import make_runner

    manifest = TextManifest.read(entry)
    if variant not in manifest.files:
        raise SystemExit(f"{entry} has no {variant!r} graph")  # manifest.graph would fall back to fp32
    graph = manifest.graph(variant)
    before = _status_mb("VmRSS")
    runner = make_runner(manifest, variant, max_batch, max_seq_len, threads)
    loaded = _status_mb("VmRSS")
    logits = runner.prefill(0, [manifest.bos_token_id, *range(40, 72)])
    for _ in range(16):
        logits = runner.decode(np.array([int(np.argmax(logits))]))[0]
    cache = runner.cache_bytes / 2**20
    after = _status_mb("VmRSS")
    return {
        "variant": variant,
        "file": graph.path.name,
        "file_mb": graph.path.stat().st_size / 2**20,
        "rss_before_mb": before,
        "rss_loaded_mb": loaded,
        "rss_after_mb": after,
        "peak_mb": _status_mb("VmHWM"),
        "kv_cache_mb": cache,
        "runner_growth_mb": after - before,
        "max_batch": max_batch,
        "max_seq_len": runner.max_seq_len,
    }


def main(argv: list[str] | None = None) -> None:
    from service.settings import Settings

    defaults = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entry", type=Path, default=ROOT / "model_repository/demo-lm")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--max-batch", type=int, default=defaults.max_batch)
    p.add_argument("--max-seq-len", type=int, default=defaults.max_seq_len)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the measurements as JSON")
    p.add_argument("--description", default=None, help="what the entry is (for docs/quantization.md)")
    p.add_argument("--bench-model", default=None, help="measure this bench_generate.py model instead of --entry")
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-models"), help="with --bench-model")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.entry, args.worker, args.max_batch, args.max_seq_len, args.threads)))
        return
    if args.bench_model:
        args.entry = _bench_entry(args.bench_model, args.workdir, args.threads)
        args.description = args.description or (
            f"the generation benchmark's random-weight {args.bench_model} model, vocab 32000, untied head"
        )
    rows = []
    for variant in [v for v in args.variants.split(",") if v]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--entry", str(args.entry), "--worker", variant]
        cmd += ["--max-batch", str(args.max_batch), "--max-seq-len", str(args.max_seq_len)]
        cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        if proc.returncode != 0:
            raise SystemExit(f"{variant}: {proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{variant:6s} file {r['file_mb']:6.2f} MB  RSS {r['rss_before_mb']:6.1f} -> {r['rss_after_mb']:6.1f} MB "
            f"(+{r['runner_growth_mb']:.1f}, KV cache {r['kv_cache_mb']:.1f})  peak {r['peak_mb']:.1f} MB"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"entry": str(args.entry), "description": args.description, "variants": rows}
        args.out.write_text(json.dumps({k: v for k, v in doc.items() if v is not None}, indent=2))


def _bench_entry(name: str, workdir: Path, threads: int) -> Path:
    """bench_generate.py's model `name`, exported with the int8/int4 variants (built once per workdir)."""
    import bench_generate
    import bench_quant

    workdir.mkdir(parents=True, exist_ok=True)
    model = bench_generate.prepare_model(name, workdir, threads, ort_genai=False)
    model.update(bench_quant.prepare(model, workdir, threads, ["kiln-int4"], bench_generate.log))
    return Path(model["kiln_quant_model"])


if __name__ == "__main__":
    main()
