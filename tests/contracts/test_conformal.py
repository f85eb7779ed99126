"""Split-conformal LAC, APS and RAPS: exact definitions on small cases, coverage on synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contracts.aggregate import softmax
from contracts.conformal import ConformalMethod, class_scores, coverage_and_size, min_alpha, quantile, true_scores

P = np.array([[0.6, 0.25, 0.1, 0.05]])


def test_scores_by_definition() -> None:
    # The top class always scores 0 (it is always in the set); the others:
    assert class_scores(P, ConformalMethod("lac"))[0] == pytest.approx([0.0, 0.75, 0.9, 0.95])
    assert class_scores(P, ConformalMethod("aps"))[0] == pytest.approx([0.0, 0.85, 0.95, 1.0])
    u = np.array([0.5])
    assert class_scores(P, ConformalMethod("aps", True), u)[0] == pytest.approx([0.0, 0.725, 0.9, 0.975])
    raps = ConformalMethod("raps", False, k_reg=2, lam=0.1)  # ranks 3 and 4 pay 0.1 and 0.2
    assert class_scores(P, raps)[0] == pytest.approx([0.0, 0.85, 1.05, 1.2])
    assert true_scores(P, np.array([2]), raps) == pytest.approx([1.05])


def test_quantile_is_the_finite_sample_corrected_order_statistic() -> None:
    scores = np.arange(1, 20) / 20  # n = 19
    # ⌈(n+1)(1-α)⌉ = ⌈20 · 0.9⌉ = 18 → the 18th smallest
    assert quantile(scores, 0.1) == pytest.approx(18 / 20)
    assert quantile(scores, 0.05) == pytest.approx(19 / 20)  # ⌈19⌉ = 19: the largest
    assert min_alpha(19) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="needs at least"):
        quantile(scores, 0.04)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = softmax(rng.normal(0, 2.5, size=(n, 10)))
    labels = np.array([rng.choice(10, p=row) for row in p])
    return p, labels


RULES = [
    ConformalMethod("lac"),
    ConformalMethod("aps"),
    ConformalMethod("aps", True),
    ConformalMethod("raps", False, 2, 0.05),
    ConformalMethod("raps", True, 2, 0.05),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: "-".join(map(str, r.key)))
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_coverage_is_one_minus_alpha_on_fresh_data(rule: ConformalMethod, alpha: float) -> None:
    """Averaged over 20 calibration/test draws the coverage is within [1-α, 1-α + 1/(n+1)] up to
    sampling noise: not conservative, even for the non-randomised scores and the always-non-empty sets."""
    n_cal, n_test, draws = 1000, 2000, 20
    covs = []
    for d in range(draws):
        cp, cy = synthetic(n_cal, 2 * d)
        tp, ty = synthetic(n_test, 2 * d + 1)
        rng = np.random.default_rng(1000 + d)
        u_cal, u_test = (rng.random(n_cal), rng.random(n_test)) if rule.randomized else (None, None)
        q = quantile(true_scores(cp, cy, rule, u_cal), alpha)
        m = coverage_and_size(tp, ty, q, rule, u_test)
        covs.append(m["coverage"])
        assert 1.0 <= m["mean_set_size"] <= 10
    sd = math.sqrt(alpha * (1 - alpha) / n_cal + alpha * (1 - alpha) / n_test) / math.sqrt(draws)
    mean = float(np.mean(covs))
    assert 1 - alpha - 4 * sd <= mean <= 1 - alpha + 1 / (n_cal + 1) + 4 * sd, (mean, sd)


def test_raps_penalty_shrinks_the_sets_and_a_looser_alpha_too() -> None:
    cp, cy = synthetic(2000, 7)
    tp, ty = synthetic(2000, 8)
    sizes = {}
    for name, rule in {"aps": ConformalMethod("aps"), "raps": ConformalMethod("raps", False, 1, 0.5)}.items():
        q = quantile(true_scores(cp, cy, rule), 0.1)
        sizes[name] = coverage_and_size(tp, ty, q, rule)["mean_set_size"]
    assert sizes["raps"] < sizes["aps"]
    lac = ConformalMethod("lac")
    loose, tight = (coverage_and_size(tp, ty, quantile(true_scores(cp, cy, lac), a), lac) for a in (0.3, 0.05))
    assert loose["mean_set_size"] < tight["mean_set_size"]


def test_unknown_method_and_missing_randomisation_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown conformal method"):
        ConformalMethod("vote")
    with pytest.raises(ValueError, match="one uniform draw per image"):
        class_scores(P, ConformalMethod("aps", True))
