"""`make eval`: measure an exported classifier on the test split and write the results into docs.

Runs the served artifacts (the ONNX graph, preprocess.json, calibration.json) through the
gateway's own view and aggregation code, on test-split scenes whose source digits no
training, validation or calibration scene used.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from contracts.aggregate import AGGREGATIONS
from contracts.calibration import Calibration
from contracts.manifest import VisionManifest, read_json
from contracts.vision import PreprocessContract
from export.vision.calibration import ece, image_probs, set_metrics
from export.vision.data import make_scenes
from export.vision.run import PIPELINES, session, view_logits

BEGIN, END = "<!-- eval:begin -->", "<!-- eval:end -->"


def evaluate(model_dir: Path, per_source: int = 2, source_limit: int | None = None, k: int = 3) -> dict:
    manifest = VisionManifest.read(model_dir)
    contract = PreprocessContract.from_dict(read_json(manifest.path(manifest.preprocess)))
    calibration = Calibration.read(manifest.path(manifest.calibration)) if manifest.calibration else None
    fitted = calibration.fitted_on if calibration else {}
    seed = int(fitted.get("seed", 0))
    grid, overlap = int(fitted.get("grid", 3)), float(fitted.get("overlap", 0.25))
    scenes = make_scenes("test", per_source, seed, limit=source_limit)
    labels = np.array([s.label for s in scenes])
    sess = session(manifest.path(manifest.files["fp32"]))
    started = time.perf_counter()
    out: dict = {
        "model": manifest.name,
        "test_images": len(scenes),
        "grid": grid,
        "overlap": overlap,
        "top1": {},
        "views_per_image": {},
    }
    for pipeline in PIPELINES:
        logits = view_logits(sess, contract, scenes, pipeline, grid, overlap)
        out["views_per_image"][pipeline] = int(len(logits[0]))
        out["top1"][pipeline] = {
            agg: float(np.mean(image_probs(logits, 1.0, agg).argmax(1) == labels)) for agg in AGGREGATIONS
        }
        if calibration:
            agg = fitted.get("aggregate", "mean")
            t = calibration.temperature[pipeline]
            raw, cal = image_probs(logits, 1.0, agg), image_probs(logits, t, agg)
            conformal = calibration.conformal
            q = conformal.thresholds[pipeline]
            out.setdefault("calibration", {})[pipeline] = {
                "aggregate": agg,
                "temperature": t,
                "ece_before": ece(raw, labels),
                "ece_after": ece(cal, labels),
                "method": conformal.method,
                "target": conformal.coverage_target,
                **set_metrics(cal, labels, q, conformal.method),
            }
    out["eval_seconds"] = time.perf_counter() - started
    return out


def markdown(r: dict) -> str:
    names = {"single": "single view (global)", "multi": f"multi-view (global + {r['grid']}×{r['grid']})"}
    names["multi_flip"] = names["multi"] + " + flip"
    lines = [
        f"Model `{r['model']}`, {r['test_images']} test-split scenes (source digits unseen in training), "
        f"grid {r['grid']}×{r['grid']}, overlap {r['overlap']}. Written by `make eval`.",
        "",
        "**Top-1 accuracy** (uncalibrated probabilities; one column per aggregation):",
        "",
        "| views | crops/image | " + " | ".join(AGGREGATIONS) + " |",
        "|---|---|" + "---|" * len(AGGREGATIONS),
    ]
    for p, accs in r["top1"].items():
        cells = " | ".join(f"{100 * accs[a]:.1f}%" for a in AGGREGATIONS)
        lines.append(f"| {names[p]} | {r['views_per_image'][p]} | {cells} |")
    if "calibration" in r:
        lines += [
            "",
            "**Calibration** (temperature fitted on the calibration split; measured on test):",
            "",
            "| views | aggregate | T | ECE before | ECE after | conformal | target | coverage | mean set size |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p, c in r["calibration"].items():
            lines.append(
                f"| {names[p]} | {c['aggregate']} | {c['temperature']:.3f} | {c['ece_before']:.4f} | "
                f"{c['ece_after']:.4f} | {c['method'].upper()} | {100 * c['target']:.0f}% | "
                f"{100 * c['coverage']:.1f}% | {c['mean_set_size']:.2f} |"
            )
    return "\n".join(lines)


def write_section(doc: Path, begin: str, end: str, body: str) -> None:
    """Replace the text between two marker comments (appending the markers if absent)."""
    text = doc.read_text() if doc.exists() else ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Evaluate an exported classifier on the demo test split.")
    ap.add_argument("--repository", default="model_repository")
    ap.add_argument("--name", default="demo-vit")
    ap.add_argument("--out", default="docs/vision.md")
    ap.add_argument("--per-source", type=int, default=2)
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args(argv)
    result = evaluate(Path(args.repository) / args.name, per_source=args.per_source)
    write_section(Path(args.out), BEGIN, END, markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
