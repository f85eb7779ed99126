"""Drift statistics against the calibration split (numpy only).

Export stores, per view pipeline, how often each class was predicted on the calibration split
and the sorted top-1 confidences there (`DriftReference` in calibration.json); the gateway keeps
a rolling window of the same two signals from live traffic and compares:

- PSI, the population-stability index of the predicted-class histogram,
  Σ (a_i − e_i) ln(a_i / e_i) over classes (shares floored at PSI_FLOOR so an unseen class
  is finite). Rule of thumb: < 0.1 stable, 0.1–0.25 moderate, > 0.25 a significant shift.
- KS, the two-sample Kolmogorov–Smirnov statistic between the live and reference confidence
  distributions: the largest gap between their empirical CDFs (0 = same, 1 = disjoint).

Both use the *uncalibrated* aggregated distribution, so a request's choice of calibrator does
not move them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class DriftReference:
    class_counts: tuple[int, ...]  # predictions per class on the calibration split
    confidences: tuple[float, ...]  # sorted top-1 confidences there

    @classmethod
    def from_probs(cls, probs: np.ndarray, digits: int = 6) -> DriftReference:
        p = np.asarray(probs, np.float64)
        counts = np.bincount(p.argmax(axis=1), minlength=p.shape[1])
        conf = np.sort(np.round(p.max(axis=1), digits))
        return cls(tuple(int(c) for c in counts), tuple(float(c) for c in conf))

    def to_dict(self) -> dict:
        return {"class_counts": list(self.class_counts), "confidences": list(self.confidences)}

    @classmethod
    def from_dict(cls, d: dict) -> DriftReference:
        return cls(tuple(int(c) for c in d["class_counts"]), tuple(float(c) for c in d["confidences"]))


def psi(expected_counts: np.ndarray, actual_counts: np.ndarray, floor: float = PSI_FLOOR) -> float:
    e = np.asarray(expected_counts, np.float64)
    a = np.asarray(actual_counts, np.float64)
    e = np.clip(e / max(e.sum(), 1.0), floor, None)
    a = np.clip(a / max(a.sum(), 1.0), floor, None)
    return float(np.sum((a - e) * np.log(a / e)))


def ks(reference_sorted: np.ndarray, sample: np.ndarray) -> float:
    """sup_x |F_ref(x) − F_sample(x)|, evaluated at every point of both samples."""
    ref = np.asarray(reference_sorted, np.float64)
    s = np.sort(np.asarray(sample, np.float64))
    if len(ref) == 0 or len(s) == 0:
        return 0.0
    grid = np.concatenate([ref, s])
    f_ref = np.searchsorted(ref, grid, side="right") / len(ref)
    f_s = np.searchsorted(s, grid, side="right") / len(s)
    return float(np.max(np.abs(f_ref - f_s)))


def drift(reference: DriftReference, predicted: np.ndarray, confidences: np.ndarray) -> tuple[float, float]:
    """(PSI of the predicted classes, KS of the confidences) of a window against the reference."""
    counts = np.bincount(np.asarray(predicted, np.int64), minlength=len(reference.class_counts))
    return psi(np.asarray(reference.class_counts), counts), ks(np.asarray(reference.confidences), confidences)
