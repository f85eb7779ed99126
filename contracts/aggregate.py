"""From per-view logits to one distribution per image (conformal sets: contracts/conformal.py)."""

from __future__ import annotations

import numpy as np

from contracts.conformal import ConformalMethod, members

AGGREGATIONS = ("mean", "max", "topk_mean", "confidence_weighted")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of an aggregated distribution: softmax(log p / T).

    For a single view this is exactly softmax(logits / T). For several views it rescales the
    final answer's confidence without changing how views are weighted against each other.
    """
    if temperature == 1.0:
        return probs
    return softmax(np.log(np.clip(probs, 1e-30, 1.0)), temperature)


def aggregate(probs: np.ndarray, method: str = "mean", k: int = 3) -> np.ndarray:
    """probs [V, C] (one row per view) → [C], summing to 1.

    - mean: average of the views.
    - max: per class, the most confident view; renormalized.
    - topk_mean: per class, the mean of its k highest view probabilities; renormalized.
    - confidence_weighted: views weighted by confidence 1 - H(p)/log C, so near-uniform
      views (background tiles) hardly count.
    """
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError("probs must be [views, classes] with at least one view")
    if method == "mean":
        out = probs.mean(axis=0)
    elif method == "max":
        out = probs.max(axis=0)
    elif method == "topk_mean":
        k = max(1, min(int(k), probs.shape[0]))
        out = np.sort(probs, axis=0)[-k:].mean(axis=0)
    elif method == "confidence_weighted":
        weights = confidence(probs) + 1e-6
        out = (weights[:, None] * probs).sum(axis=0) / weights.sum()
    else:
        raise ValueError(f"unknown aggregation {method!r}; one of {AGGREGATIONS}")
    return out / out.sum()


def confidence(probs: np.ndarray) -> np.ndarray:
    """Per view, 1 - H(p)/log C in [0, 1]: 1 for a one-hot view, 0 for a uniform one."""
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    return np.clip(1.0 - entropy / np.log(probs.shape[1]), 0.0, 1.0)


def view_weights(probs: np.ndarray, method: str) -> np.ndarray | None:
    """Each view's share of the aggregate (summing to 1) where the aggregate is a weighted mean
    of the views (`mean`, `confidence_weighted`); None for `max` and `topk_mean`, which pick
    per class rather than weigh views."""
    if method == "mean":
        return np.full(probs.shape[0], 1.0 / probs.shape[0])
    if method == "confidence_weighted":
        weights = confidence(probs) + 1e-6
        return weights / weights.sum()
    return None


def prediction_set(probs: np.ndarray, threshold: float, method: str = "lac") -> list[int]:
    """Class indices in the split-conformal set (non-randomised LAC, APS or RAPS without penalty),
    most probable first; never empty. contracts/conformal.py defines the scores and all options."""
    return members(probs, threshold, ConformalMethod(method))
