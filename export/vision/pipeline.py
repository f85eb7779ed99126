"""`kiln export` for classifiers: checkpoint → verified ONNX → calibration → one repository entry.

    model_repository/<name>/
      config.pbtxt          Triton: onnxruntime_onnx, max_batch_size, dynamic_batching, instance_group
      labels.txt            one label per line (Triton's label_filename)
      1/model.onnx          dynamic batch axis
      preprocess.json       the preprocessing contract the gateway reads (size, mean/std, resize, labels)
      views.onnx            one decoded image -> every view (crops, resizes, flips, normalisation), equal to Pillow's
      calibration.json      per pipeline: calibrators, the default by validation NLL, the conformal holdout and
                            the drift reference (contracts/calibration.py, version 2)
      kiln.json             serving manifest ("kind": "image-classification")
      export_report.json    verification (model and views graph), calibrator selection, a quick test-split check

Calibration needs labelled data: demo checkpoints name their dataset and seed, and export
draws the calibration and test splits from it. Other checkpoints export uncalibrated.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from contracts.calibration import Calibration
from contracts.conformal import coverage_and_size
from contracts.manifest import VisionManifest
from contracts.vision import PreprocessContract
from export.onnx_export import toolchain_versions
from export.triton_repo import classifier_onnx_config, staged_entry, write_config
from export.vision.calibration import image_probs
from export.vision.checkpoint import KIND, load_vision_checkpoint
from export.vision.fit_calibration import fit_calibration
from export.vision.metrics import ece, nll
from export.vision.onnx_export import export_classifier_onnx, verify_classifier
from export.vision.run import PIPELINES, session, view_logits
from export.vision.views_graph import export_views_graph, verify_views_graph

MODEL_FILE = "1/model.onnx"
VIEWS_FILE = "views.onnx"
CALIB_PER_SOURCE = 20  # placements per calibration-split digit: 270 digits -> 5400 scenes
REPORT_PER_SOURCE = 2  # the export report's quick test-split check (`make eval` measures the full split)


def calibrate(
    onnx_file: Path,
    contract: PreprocessContract,
    dataset: dict,
    alpha: float = 0.1,
    method: str = "lac",
    aggregate: str = "confidence_weighted",
    grid: int = 3,
    overlap: float = 0.25,
    per_source: int = CALIB_PER_SOURCE,
    source_limit: int | None = None,
    report_per_source: int = REPORT_PER_SOURCE,
) -> tuple[Calibration, dict]:
    """Fit every calibrator per pipeline on the calibration split (export/vision/fit_calibration.py)
    and check the defaults on a few test-split scenes. Returns (calibration.json content, report)."""
    from export.vision.data import make_scenes

    seed = int(dataset.get("seed", 0))
    calib = make_scenes("calib", per_source, seed, limit=source_limit)
    test = make_scenes("test", report_per_source, seed, limit=source_limit)
    y_cal = np.array([s.label for s in calib])
    y_test = np.array([s.label for s in test])
    sess = session(onnx_file)
    cal_probs, test_probs = {}, {}
    for pipeline in PIPELINES:
        cal_probs[pipeline] = image_probs(view_logits(sess, contract, calib, pipeline, grid, overlap), 1.0, aggregate)
        test_probs[pipeline] = image_probs(view_logits(sess, contract, test, pipeline, grid, overlap), 1.0, aggregate)
    fitted = {
        "dataset": dataset.get("name"),
        "seed": seed,
        "calib_images": len(calib),
        "calib_sources": len({s.source for s in calib}),
        "aggregate": aggregate,
        "grid": grid,
        "overlap": overlap,
    }
    calibration = fit_calibration(cal_probs, y_cal, [s.source for s in calib], seed, fitted, method, alpha)
    # Report from what the file holds (stored probabilities are rounded), exactly as the gateway reads it.
    stored = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    rule = stored.conformal.rule()
    report = {}
    for pipeline, pc in stored.pipelines.items():
        raw, cal = test_probs[pipeline], pc.calibrators[pc.default].apply(test_probs[pipeline])
        q = pc.qhat(pc.default, rule, alpha, stored.conformal.seed)
        inside = coverage_and_size(cal, y_test, q, rule)
        report[pipeline] = {
            "default": pc.default,
            "selection": pc.selection,
            "top1_test": float(np.mean(cal.argmax(1) == y_test)),
            "ece_test": {"before": ece(raw, y_test), "after": ece(cal, y_test)},
            "nll_test": {"before": nll(raw, y_test), "after": nll(cal, y_test)},
            "conformal": {"threshold": q, **inside},
        }
    fitted |= {"test_images_in_report": len(test)}
    return stored, {"fitted_on": fitted, "conformal": stored.conformal.to_dict(), "pipelines": report}


def export_classifier(
    checkpoint: Path,
    repository: Path,
    name: str,
    tolerance: float = 1e-4,
    alpha: float = 0.1,
    conformal_method: str = "lac",
    aggregate: str = "confidence_weighted",
    per_source: int = CALIB_PER_SOURCE,
    source_limit: int | None = None,
    report_per_source: int = REPORT_PER_SOURCE,
    max_batch_size: int = 64,
    weights: Path | None = None,
) -> dict:
    started = time.perf_counter()
    ckpt = load_vision_checkpoint(checkpoint, weights)
    model, contract = ckpt.model, ckpt.contract
    with staged_entry(repository, name) as staging:
        report: dict = {
            "name": name,
            "kind": KIND,
            "checkpoint": str(checkpoint),
            "arch": ckpt.arch,
            "parameters": sum(p.numel() for p in model.parameters()),
            "timings_s": {},
            "versions": toolchain_versions(),
        }
        t = time.perf_counter()
        onnx_file = export_classifier_onnx(model, contract, staging / MODEL_FILE)
        report["timings_s"]["export"] = time.perf_counter() - t
        t = time.perf_counter()
        report["verification"] = verify_classifier(model, onnx_file, contract, tolerance)
        report["timings_s"]["verify"] = time.perf_counter() - t

        (staging / "preprocess.json").write_text(json.dumps(contract.to_dict(), indent=2))
        (staging / "labels.txt").write_text("".join(f"{label}\n" for label in contract.labels))
        t = time.perf_counter()
        views_file = export_views_graph(contract, staging / VIEWS_FILE)
        report["views_graph"] = verify_views_graph(views_file, contract)
        report["timings_s"]["views_graph"] = time.perf_counter() - t
        calibration_file = None
        dataset = ckpt.meta.get("dataset")
        if dataset:
            t = time.perf_counter()
            calibration, report["calibration"] = calibrate(
                onnx_file,
                contract,
                dataset,
                alpha,
                conformal_method,
                aggregate,
                per_source=per_source,
                source_limit=source_limit,
                report_per_source=report_per_source,
            )
            calibration_file = calibration.write(staging / "calibration.json").name
            report["timings_s"]["calibration"] = time.perf_counter() - t
        VisionManifest(
            name=name,
            files={"fp32": MODEL_FILE},
            num_classes=len(contract.labels),
            preprocess="preprocess.json",
            calibration=calibration_file,
            arch=ckpt.arch,
            views=VIEWS_FILE,
        ).write(staging)
        write_config(
            staging,
            classifier_onnx_config(
                name,
                contract.input_name,
                contract.output_name,
                contract.input_size,
                len(contract.labels),
                max_batch_size=max_batch_size,
            ),
        )
        report["timings_s"]["total"] = time.perf_counter() - started
        report["summary"] = {
            "model": name,
            "parameters": report["parameters"],
            "max_abs_logits": report["verification"]["max_abs_logits"],
            **(
                {
                    p: {
                        "default_calibrator": r["default"],
                        "top1_test": round(r["top1_test"], 4),
                        "ece_test": {k: round(v, 4) for k, v in r["ece_test"].items()},
                        "coverage": round(r["conformal"]["coverage"], 4),
                        "mean_set_size": round(r["conformal"]["mean_set_size"], 3),
                    }
                    for p, r in report["calibration"]["pipelines"].items()
                }
                if "calibration" in report
                else {}
            ),
        }
        (staging / "export_report.json").write_text(json.dumps(report, indent=2, default=str))
    return report
