"""Temperature scaling, ECE and split-conformal sets on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.aggregate import softmax
from export.vision.calibration import (
    conformal_scores,
    conformal_threshold,
    ece,
    fit_temperature,
    image_probs,
    set_metrics,
)


def synthetic(n: int, true_t: float, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Logits whose calibrated temperature is `true_t`: labels are sampled from softmax(z / true_t)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, size=(n, 10))
    p = softmax(z, true_t)
    labels = np.array([rng.choice(10, p=row) for row in p])
    return [row[None, :] for row in z], labels


def test_temperature_recovers_the_true_temperature_and_lowers_ece() -> None:
    logits, labels = synthetic(4000, true_t=2.5)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.1)
    before, after = ece(image_probs(logits, 1.0), labels), ece(image_probs(logits, t), labels)
    assert after < before / 2


def test_ece_of_perfectly_calibrated_and_overconfident_predictions() -> None:
    # Confidence 0.8 and right 80% of the time: ECE 0. Confidence 1.0 and right 50%: ECE 0.5.
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-9)
    assert ece(np.tile([1.0, 0.0], (10, 1)), np.array([0, 1] * 5)) == pytest.approx(0.5)


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_split_conformal_covers_the_target_on_fresh_data(method: str) -> None:
    cal_logits, cal_y = synthetic(3000, true_t=1.0, seed=1)
    test_logits, test_y = synthetic(3000, true_t=1.0, seed=2)
    q = conformal_threshold(image_probs(cal_logits), cal_y, alpha=0.1, method=method)
    m = set_metrics(image_probs(test_logits), test_y, q, method)
    # LAC is tight; non-randomized APS is conservative (a whole class is added at once).
    assert 0.88 <= m["coverage"] <= (0.93 if method == "lac" else 0.97)
    assert 1.0 <= m["mean_set_size"] < 10
    # A looser target gives smaller sets.
    q50 = conformal_threshold(image_probs(cal_logits), cal_y, alpha=0.5, method=method)
    assert set_metrics(image_probs(test_logits), test_y, q50, method)["mean_set_size"] < m["mean_set_size"]


def test_conformal_scores() -> None:
    probs = np.array([[0.6, 0.3, 0.1]])
    assert conformal_scores(probs, np.array([1]), "lac") == pytest.approx([0.7])
    assert conformal_scores(probs, np.array([1]), "aps") == pytest.approx([0.9])
