"""Fitting calibration.json on the calibration split (export side).

The calibration split is divided *by source digit* into a fit part and a validation part: every
calibrator is fitted on the fit part, the default is the one with the lowest NLL on the
validation part, and the validation part's uncalibrated distributions are stored as the
conformal holdout (no calibrator saw them, so any calibrator's conformal scores are
exchangeable with a fresh image's). The RAPS defaults (k_reg, λ) are tuned on the fit part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from contracts.calibration import Calibration, ConformalDefaults, PipelineCalibration
from contracts.conformal import ConformalMethod, coverage_and_size, quantile, true_scores
from contracts.drift import DriftReference
from export.vision.calibrators import fit_all
from export.vision.metrics import nll

FIT_SHARE = 0.3  # of the calibration split's source digits; the rest is the validation part (the holdout)
RAPS_LAMBDAS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.5)


def split_by_source(sources: Sequence[int], seed: int, fit_share: float = FIT_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (fit, validation) over images, keeping all images of one source together."""
    src = np.asarray(sources)
    unique = np.unique(src)
    chosen = np.random.default_rng([seed, 7]).permutation(unique)[: max(1, round(fit_share * len(unique)))]
    fit = np.isin(src, chosen)
    return fit, ~fit


def tune_raps(probs: np.ndarray, labels: np.ndarray, alpha: float) -> tuple[int, float]:
    """k_reg: the (1 − α) quantile of the true label's rank; λ: the grid value with the smallest mean
    set size at α (Angelopoulos et al. 2021, on a tuning split, here the fit part)."""
    ranks = 1 + np.sum(probs > probs[np.arange(len(labels)), labels][:, None], axis=1)
    k_reg = int(max(1, math.ceil(np.quantile(ranks, 1 - alpha))))
    best = (math.inf, RAPS_LAMBDAS[0])
    for lam in RAPS_LAMBDAS:
        rule = ConformalMethod("raps", False, k_reg, lam)
        q = quantile(true_scores(probs, labels, rule), alpha)
        size = coverage_and_size(probs, labels, q, rule)["mean_set_size"]
        best = min(best, (size, lam))
    return k_reg, best[1]


def fit_pipeline(probs: np.ndarray, labels: np.ndarray, sources: Sequence[int], seed: int) -> PipelineCalibration:
    """probs [N, C]: uncalibrated aggregated distributions of the whole calibration split."""
    fit, val = split_by_source(sources, seed)
    calibrators = fit_all(probs[fit], labels[fit])
    scores = {name: nll(c.apply(probs[val]), labels[val]) for name, c in calibrators.items()}
    default = min(scores, key=scores.__getitem__)
    return PipelineCalibration(
        calibrators=calibrators,
        default=default,
        holdout_probs=probs[val],
        holdout_labels=labels[val],
        holdout_sources=np.asarray(sources)[val],
        reference=DriftReference.from_probs(probs),
        selection={
            "metric": "nll",
            "on": "validation part of the calibration split",
            "fit_images": int(fit.sum()),
            "validation_images": int(val.sum()),
            "scores": scores,
        },
    )


def fit_calibration(
    per_pipeline: dict[str, np.ndarray],
    labels: np.ndarray,
    sources: Sequence[int],
    seed: int,
    fitted_on: dict,
    method: str = "lac",
    alpha: float = 0.1,
) -> Calibration:
    """calibration.json from each pipeline's calibration-split distributions. RAPS defaults are
    tuned on the multi-view + flip pipeline's fit part (the one the gateway's flips use)."""
    pipelines = {p: fit_pipeline(probs, labels, sources, seed) for p, probs in per_pipeline.items()}
    tune_on = "multi_flip" if "multi_flip" in per_pipeline else next(iter(per_pipeline))
    fit, _ = split_by_source(sources, seed)
    chosen = pipelines[tune_on]
    k_reg, lam = tune_raps(chosen.calibrators[chosen.default].apply(per_pipeline[tune_on][fit]), labels[fit], alpha)
    defaults = ConformalDefaults(method=method, alpha=alpha, randomized=False, k_reg=k_reg, lam=lam, seed=seed)
    return Calibration(pipelines, defaults, fitted_on)
