"""Split-conformal prediction sets: LAC, APS and RAPS, randomised or not (numpy only).

Every method is a nonconformity score s(x, y) for each class; a set holds every class whose
score is at most q̂, the ⌈(n+1)(1−α)⌉-th smallest score of the true labels on n held-out
calibration images. Then P(y ∈ set) ≥ 1 − α for a fresh exchangeable image, and at most
1 − α + 1/(n+1) when the scores have no ties.

- LAC (least ambiguous set-valued classifier, Sadinle et al. 2019): s = 1 − p_y.
- APS (adaptive prediction sets, Romano et al. 2020): s = the mass of the classes ranked
  above y, plus p_y (randomised: plus U·p_y, U ~ Uniform(0, 1), one U per image).
- RAPS (regularised APS, Angelopoulos et al. 2021): APS + λ·max(0, rank(y) − k_reg), which
  penalises long tails of unlikely classes.

The top class is always in the set, and its score is defined as 0 so that the calibration
quantile already counts that rule: sets are never empty and the coverage stays exact rather
than becoming conservative. APS and RAPS scores grow with the rank, so every set is the
top-m classes for some m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METHODS = ("lac", "aps", "raps")


@dataclass(frozen=True)
class ConformalMethod:
    """One scoring rule: the method and its parameters (k_reg and lam matter for RAPS only)."""

    method: str = "lac"
    randomized: bool = False
    k_reg: int = 1
    lam: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown conformal method {self.method!r}; one of {list(METHODS)}")
        if self.k_reg < 0 or self.lam < 0:
            raise ValueError("RAPS needs k_reg >= 0 and lambda >= 0")

    @property
    def key(self) -> tuple:
        """What the scores depend on (LAC ignores randomisation and the RAPS parameters)."""
        if self.method == "lac":
            return ("lac",)
        if self.method == "aps":
            return ("aps", self.randomized)
        return ("raps", self.randomized, self.k_reg, self.lam)


def class_scores(probs: np.ndarray, rule: ConformalMethod, u: np.ndarray | None = None) -> np.ndarray:
    """[N, C] nonconformity score of every class. `u` [N] in [0, 1): the randomisation, one per image
    (required when rule.randomized and the method is APS or RAPS)."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2:
        raise ValueError("probs must be [images, classes]")
    n, c = p.shape
    order = np.argsort(-p, axis=1, kind="stable")
    rank = np.empty_like(order)
    rank[np.arange(n)[:, None], order] = np.arange(c)[None, :]  # 0 = most probable
    if rule.method == "lac":
        scores = 1.0 - p
    else:
        sorted_p = np.take_along_axis(p, order, axis=1)
        cum = np.take_along_axis(np.cumsum(sorted_p, axis=1), rank, axis=1)  # mass up to and including y
        if rule.randomized:
            if u is None or len(u) != n:
                raise ValueError("randomised scores need one uniform draw per image")
            scores = cum - (1.0 - np.asarray(u, np.float64))[:, None] * p  # mass above y, plus U·p_y
        else:
            scores = cum
        if rule.method == "raps":
            scores = scores + rule.lam * np.maximum(0, rank + 1 - rule.k_reg)
    return np.where(rank == 0, 0.0, scores)


def true_scores(
    probs: np.ndarray, labels: np.ndarray, rule: ConformalMethod, u: np.ndarray | None = None
) -> np.ndarray:
    """[N] the score of each image's true label (the calibration scores)."""
    labels = np.asarray(labels, np.int64)
    return class_scores(probs, rule, u)[np.arange(len(labels)), labels]


def min_alpha(n: int) -> float:
    """The smallest α a calibration set of n images supports: below it q̂ would be +∞ (every class)."""
    return 1.0 / (n + 1)


def quantile(scores: np.ndarray, alpha: float) -> float:
    """q̂: the ⌈(n+1)(1−α)⌉-th smallest calibration score (the finite-sample corrected quantile)."""
    n = len(scores)
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-12)  # the tolerance keeps (n+1)(1-α) = integer exact
    if k > n:
        raise ValueError(f"alpha {alpha:g} needs at least {math.ceil(1 / alpha - 1)} calibration images, there are {n}")
    return float(np.sort(np.asarray(scores, np.float64))[max(k, 1) - 1])


def sets(probs: np.ndarray, qhat: float, rule: ConformalMethod, u: np.ndarray | None = None) -> np.ndarray:
    """[N, C] boolean membership of each class in each image's prediction set."""
    return class_scores(probs, rule, u) <= qhat + 1e-12


def members(probs: np.ndarray, qhat: float, rule: ConformalMethod, u: float | None = None) -> list[int]:
    """One image's set as class indices, most probable first."""
    row = np.asarray(probs, np.float64)[None, :]
    inside = sets(row, qhat, rule, None if u is None else np.array([u]))[0]
    order = np.argsort(-row[0], kind="stable")
    return [int(i) for i in order if inside[i]]


def coverage_and_size(probs: np.ndarray, labels: np.ndarray, qhat: float, rule: ConformalMethod, u=None) -> dict:  # type: ignore[no-untyped-def]
    inside = sets(probs, qhat, rule, u)
    labels = np.asarray(labels, np.int64)
    return {
        "coverage": float(inside[np.arange(len(labels)), labels].mean()),
        "mean_set_size": float(inside.sum(axis=1).mean()),
    }
