"""From view logits to the per-image distributions everything is calibrated on, and the
split-conformal helpers export's report and tests use (contracts/conformal.py does the work).

Everything works on *aggregated* per-image probabilities, because that is what the gateway
returns: a calibrator maps the aggregated distribution of an image to a calibrated one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contracts.aggregate import aggregate, softmax, temper
from contracts.conformal import ConformalMethod, coverage_and_size, quantile, true_scores
from export.vision.calibrators import fit_temperature as _fit_temperature
from export.vision.metrics import ece, nll

__all__ = ["image_probs", "nll", "ece", "fit_temperature", "conformal_scores", "conformal_threshold", "set_metrics"]


def image_probs(view_logits: Sequence[np.ndarray], temperature: float = 1.0, method: str = "mean") -> np.ndarray:
    """[N, C]: each image's views → softmax → aggregated → tempered with T (see `temper`)."""
    return np.stack([temper(aggregate(softmax(v), method), temperature) for v in view_logits])


def fit_temperature(view_logits: Sequence[np.ndarray], labels: np.ndarray, method: str = "mean") -> float:
    """The NLL-optimal temperature of the aggregated distributions (L-BFGS over log T)."""
    return float(_fit_temperature(image_probs(view_logits, 1.0, method), labels).params["temperature"])


def conformal_scores(probs: np.ndarray, labels: np.ndarray, method: str = "lac") -> np.ndarray:
    return true_scores(probs, labels, ConformalMethod(method))


def conformal_threshold(probs: np.ndarray, labels: np.ndarray, alpha: float = 0.1, method: str = "lac") -> float:
    """q̂: the ⌈(n+1)(1-α)⌉-th smallest calibration score."""
    return quantile(conformal_scores(probs, labels, method), alpha)


def set_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float, method: str = "lac") -> dict:
    return coverage_and_size(probs, labels, threshold, ConformalMethod(method))
