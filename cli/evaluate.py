"""`kiln evaluate`: perplexity of exported LM variants on a text file, with a progress bar.

Each variant is scored through its own graph contract (export/perplexity.py): the standard
graphs with one forward per window, the fused graph token by token over its cache, the way the
engine runs it. The same weights give the same perplexity either way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_evaluate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from cli.textclient import pick_entry, quiet_onnxruntime
    from contracts.manifest import TextManifest, read_manifest
    from export.perplexity import variant_perplexity

    quiet_onnxruntime()
    manifest = read_manifest(pick_entry(Path(args.repository), args.model, TextManifest.kind))
    assert isinstance(manifest, TextManifest)
    text = Path(args.text).read_text(encoding="utf-8")
    variants = sorted(manifest.files) if args.variant == "all" else [args.variant]
    results = {}
    for variant in variants:
        with tqdm(desc=f"{manifest.name} {variant}", unit="tok", disable=None, leave=False) as bar:
            ppl, tokens = variant_perplexity(manifest, variant, [text], args.window, args.max_tokens, bar.update)
        results[variant] = {"perplexity": ppl, "tokens": tokens, "contract": manifest.graph(variant).contract}
    if args.json:
        print(json.dumps({"model": manifest.name, "text": args.text, "variants": results}, indent=2))
        return
    print(f"{manifest.name} on {args.text}:")
    for variant, r in results.items():
        print(f"  {variant:<10} perplexity {r['perplexity']:10.3f}   ({r['tokens']} tokens, {r['contract']} graph)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="perplexity of exported LM variants on a text file")
    p.add_argument("text", help="a UTF-8 text file")
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--model", help="text model name (default: the only one)")
    p.add_argument("--variant", default="all", help="fp32, fused, optimized, int8 or all (default)")
    p.add_argument("--window", type=int, default=256, help="tokens per scored window (BOS included)")
    p.add_argument("--max-tokens", type=int, default=20_000, help="at most this many tokens are scored")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
