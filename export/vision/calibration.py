"""Temperature scaling, expected calibration error and split-conformal prediction sets (numpy).

Everything works on *aggregated* per-image probabilities, because that is what the gateway
returns: `fit_temperature` takes per-image stacks of view logits and an aggregation, and
finds the T that minimises the negative log-likelihood of softmax(log p_aggregated / T).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from contracts.aggregate import aggregate, prediction_set, softmax, temper

Aggregate = Callable[[np.ndarray], np.ndarray]


def image_probs(view_logits: Sequence[np.ndarray], temperature: float = 1.0, method: str = "mean") -> np.ndarray:
    """[N, C]: each image's views → softmax → aggregated → tempered with T (see `temper`)."""
    return np.stack([temper(aggregate(softmax(v), method), temperature) for v in view_logits])


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))


def fit_temperature(
    view_logits: Sequence[np.ndarray], labels: np.ndarray, method: str = "mean", lo: float = 0.05, hi: float = 20.0
) -> float:
    """argmin_T NLL by golden-section search over log T (the NLL is unimodal in T here)."""
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2

    def f(log_t: float) -> float:
        return nll(image_probs(view_logits, math.exp(log_t), method), labels)

    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return float(math.exp((a + b) / 2))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence, equal-width bins."""
    conf = probs.max(axis=1)
    hit = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(hit[m].mean() - conf[m].mean())
    return float(total)


def conformal_scores(probs: np.ndarray, labels: np.ndarray, method: str = "lac") -> np.ndarray:
    p_true = probs[np.arange(len(labels)), labels]
    if method == "lac":
        return 1.0 - p_true
    if method == "aps":  # mass of every class at least as probable as the true one (non-randomized)
        return np.array([p[p >= pt].sum() for p, pt in zip(probs, p_true, strict=True)])
    raise ValueError(f"unknown conformal method {method!r}")


def conformal_threshold(probs: np.ndarray, labels: np.ndarray, alpha: float = 0.1, method: str = "lac") -> float:
    """q̂: the ⌈(n+1)(1-α)⌉/n empirical quantile of the calibration scores."""
    n = len(labels)
    level = min(1.0, math.ceil((n + 1) * (1 - alpha)) / n)
    return float(np.quantile(conformal_scores(probs, labels, method), level, method="higher"))


def set_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float, method: str = "lac") -> dict:
    sets = [prediction_set(p, threshold, method) for p in probs]
    return {
        "coverage": float(np.mean([int(y) in s for s, y in zip(sets, labels, strict=True)])),
        "mean_set_size": float(np.mean([len(s) for s in sets])),
    }
