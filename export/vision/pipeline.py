"""`kiln export` for classifiers: checkpoint → verified ONNX → calibration → one repository entry.

    model_repository/<name>/
      config.pbtxt          Triton: onnxruntime_onnx, max_batch_size, dynamic_batching, instance_group
      labels.txt            one label per line (Triton's label_filename)
      1/model.onnx          dynamic batch axis
      preprocess.json       the preprocessing contract the gateway reads (size, mean/std, resize, labels)
      calibration.json      temperature and conformal thresholds per pipeline (single / multi / multi_flip)
      kiln.json             serving manifest ("kind": "image-classification")
      export_report.json    verification, ECE before/after, conformal coverage and set size on test

Calibration needs labelled data: demo checkpoints name their dataset and seed, and export
draws the calibration and test splits from it. Other checkpoints export uncalibrated.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from contracts.calibration import Calibration, Conformal
from contracts.manifest import VisionManifest
from contracts.vision import PreprocessContract
from export.onnx_export import toolchain_versions
from export.triton_repo import classifier_onnx_config, staged_entry, write_config
from export.vision.calibration import (
    conformal_threshold,
    ece,
    fit_temperature,
    image_probs,
    nll,
    set_metrics,
)
from export.vision.checkpoint import KIND, load_vision_checkpoint
from export.vision.onnx_export import export_classifier_onnx, verify_classifier
from export.vision.run import PIPELINES, session, view_logits

MODEL_FILE = "1/model.onnx"


def calibrate(
    onnx_file: Path,
    contract: PreprocessContract,
    dataset: dict,
    alpha: float = 0.1,
    method: str = "lac",
    aggregate: str = "confidence_weighted",
    grid: int = 3,
    overlap: float = 0.25,
    per_source: int = 2,
    source_limit: int | None = None,
) -> tuple[Calibration, dict]:
    """Fit T and q̂ per pipeline on the calibration split; measure on the test split.
    Returns (calibration.json content, report section)."""
    from export.vision.data import make_scenes

    seed = int(dataset.get("seed", 0))
    calib = make_scenes("calib", per_source, seed, limit=source_limit)
    test = make_scenes("test", per_source, seed, limit=source_limit)
    y_cal = np.array([s.label for s in calib])
    y_test = np.array([s.label for s in test])
    sess = session(onnx_file)
    temps, thresholds, report = {}, {}, {}
    for pipeline in PIPELINES:
        lc = view_logits(sess, contract, calib, pipeline, grid, overlap)
        lt = view_logits(sess, contract, test, pipeline, grid, overlap)
        t = fit_temperature(lc, y_cal, aggregate)
        raw_c, cal_c = image_probs(lc, 1.0, aggregate), image_probs(lc, t, aggregate)
        raw_t, cal_t = image_probs(lt, 1.0, aggregate), image_probs(lt, t, aggregate)
        q = conformal_threshold(cal_c, y_cal, alpha, method)
        temps[pipeline], thresholds[pipeline] = t, q
        report[pipeline] = {
            "temperature": t,
            "top1_test": float(np.mean(raw_t.argmax(1) == y_test)),
            "ece_calib": {"before": ece(raw_c, y_cal), "after": ece(cal_c, y_cal)},
            "ece_test": {"before": ece(raw_t, y_test), "after": ece(cal_t, y_test)},
            "nll_test": {"before": nll(raw_t, y_test), "after": nll(cal_t, y_test)},
            "conformal": {"threshold": q, **set_metrics(cal_t, y_test, q, method)},
        }
    fitted = {
        "dataset": dataset.get("name"),
        "seed": seed,
        "calib_images": len(calib),
        "test_images": len(test),
        "aggregate": aggregate,
        "grid": grid,
        "overlap": overlap,
    }
    calibration = Calibration(temps, Conformal(method, alpha, thresholds), fitted)
    return calibration, {"fitted_on": fitted, "method": method, "alpha": alpha, "pipelines": report}


def export_classifier(
    checkpoint: Path,
    repository: Path,
    name: str,
    tolerance: float = 1e-4,
    alpha: float = 0.1,
    conformal_method: str = "lac",
    aggregate: str = "confidence_weighted",
    per_source: int = 2,
    source_limit: int | None = None,
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
