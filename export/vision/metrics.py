"""How good are the probabilities: calibration errors, proper scores and selective prediction.

All take aggregated per-image distributions probs [N, C] and labels [N].

- ECE / MCE: the top-1 confidence in 15 equal-width bins; the mean (weighted by bin size) and the
  largest gap between confidence and accuracy. Classwise ECE: the same for every class's own
  probability against 1[y = c], averaged over classes (Kull et al. 2019).
- Brier: mean Σ_c (p_c − 1[y = c])²; NLL: mean −log p_y. Both proper scores.
- AUROC of the confidence for detecting errors: how well "low confidence" ranks the wrong
  answers above the right ones (0.5 = no better than chance).
- AURC: the area under the risk–coverage curve: answer only the k most confident images, risk =
  their error rate; averaged over k = 1..N (lower is better).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

BINS = 15


def _bin_gaps(conf: np.ndarray, hit: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per non-empty bin: share of samples, |accuracy − confidence|."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # (lo, hi] bins; 0 goes to the first
    weight, gap = [], []
    for b in range(bins):
        m = idx == b
        if m.any():
            weight.append(m.mean())
            gap.append(abs(hit[m].mean() - conf[m].mean()))
    return np.asarray(weight), np.asarray(gap)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    w, g = _bin_gaps(probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64), bins)
    return float(np.sum(w * g))


def mce(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    _, g = _bin_gaps(probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64), bins)
    return float(g.max()) if len(g) else 0.0


def classwise_ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    out = []
    for c in range(probs.shape[1]):
        w, g = _bin_gaps(probs[:, c], (labels == c).astype(np.float64), bins)
        out.append(np.sum(w * g))
    return float(np.mean(out))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    y = np.zeros_like(probs)
    y[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - y) ** 2, axis=1)))


def error_auroc(probs: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of −confidence as a detector of wrong top-1 answers (NaN when all are right or all wrong)."""
    wrong = probs.argmax(axis=1) != labels
    if wrong.all() or not wrong.any():
        return float("nan")
    return float(roc_auc_score(wrong, -probs.max(axis=1)))


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage k/N, risk among the k most confident) for k = 1..N."""
    conf = probs.max(axis=1)
    wrong = (probs.argmax(axis=1) != labels).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    k = np.arange(1, len(conf) + 1)
    return k / len(conf), np.cumsum(wrong[order]) / k


def aurc(probs: np.ndarray, labels: np.ndarray) -> float:
    _, risk = risk_coverage(probs, labels)
    return float(risk.mean())


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """Per bin: mean confidence, accuracy and count (for the reliability diagram)."""
    conf = probs.max(axis=1)
    hit = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    out: dict = {"edges": edges.tolist(), "confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        m = idx == b
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float(hit[m].mean()) if m.any() else None)
    return out


def all_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
        "ece": ece(probs, labels),
        "mce": mce(probs, labels),
        "classwise_ece": classwise_ece(probs, labels),
        "brier": brier(probs, labels),
        "nll": nll(probs, labels),
        "error_auroc": error_auroc(probs, labels),
        "aurc": aurc(probs, labels),
    }
