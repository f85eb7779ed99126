"""Calibrators fitted with SciPy / scikit-learn lower the NLL of a miscalibrated model, and the
gateway's numpy application (contracts/calibrators.py) is exactly the fitted function."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from scipy.special import softmax as sp_softmax
from sklearn.isotonic import IsotonicRegression

from contracts.calibrators import OVR_EPS, Calibrator
from export.vision.calibrators import FITTED, fit_all, fit_isotonic
from export.vision.metrics import ece, nll


def miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overconfident and class-biased: labels come from softmax(z) but the model reports
    softmax(2.5 z + bias)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 6))
    labels = np.array([rng.choice(6, p=row) for row in sp_softmax(z, axis=1)])
    bias = np.array([0.8, 0, 0, -0.5, 0, 0.3])
    return sp_softmax(2.5 * z + bias, axis=1), labels


@pytest.fixture(scope="module")
def fitted() -> tuple[dict[str, Calibrator], np.ndarray, np.ndarray]:
    p_fit, y_fit = miscalibrated(4000, 0)
    p_test, y_test = miscalibrated(4000, 1)
    return fit_all(p_fit, y_fit), p_test, y_test


@pytest.mark.parametrize("kind", FITTED)
def test_every_calibrator_lowers_nll_and_ece_on_fresh_data(fitted, kind: str) -> None:  # type: ignore[no-untyped-def]
    calibrators, p, y = fitted
    before, after = nll(p, y), nll(calibrators[kind].apply(p), y)
    assert after < before - 0.05, (kind, before, after)
    assert ece(calibrators[kind].apply(p), y) < ece(p, y) / 2
    out = calibrators[kind].apply(p)
    assert out.shape == p.shape and np.allclose(out.sum(1), 1.0) and (out > 0).all()


def test_scaling_calibrators_recover_the_planted_miscalibration(fitted) -> None:  # type: ignore[no-untyped-def]
    calibrators, _, _ = fitted
    assert calibrators["temperature"].params["temperature"] == pytest.approx(2.5, rel=0.1)
    w = np.asarray(calibrators["vector"].params["w"])
    assert w == pytest.approx(np.full(6, 1 / 2.5), rel=0.2)
    W = np.asarray(calibrators["dirichlet"].params["W"])
    assert np.abs(np.diag(W) - 1 / 2.5).max() < 0.15 and np.abs(W - np.diag(np.diag(W))).max() < 0.1


def test_numpy_application_equals_the_fitted_models(fitted) -> None:  # type: ignore[no-untyped-def]
    calibrators, p, _ = fitted
    logp = np.log(p)
    t = calibrators["temperature"].params["temperature"]
    assert np.allclose(calibrators["temperature"].apply(p), sp_softmax(logp / t, axis=1), atol=1e-12)
    v = calibrators["vector"].params
    assert np.allclose(calibrators["vector"].apply(p), sp_softmax(logp * v["w"] + v["b"], axis=1), atol=1e-12)
    d = calibrators["dirichlet"].params
    want = sp_softmax(logp @ np.asarray(d["W"]).T + d["b"], axis=1)
    assert np.allclose(calibrators["dirichlet"].apply(p), want, atol=1e-12)
    b = calibrators["beta"].params
    pc = np.clip(p, OVR_EPS, 1 - OVR_EPS)
    q = expit(np.asarray(b["a"]) * np.log(pc) - np.asarray(b["b"]) * np.log(1 - pc) + np.asarray(b["c"]))
    assert np.allclose(calibrators["beta"].apply(p), q / q.sum(1, keepdims=True), atol=1e-12)


def test_isotonic_knots_with_np_interp_equal_scikit_learn_predict() -> None:
    p, y = miscalibrated(3000, 3)
    stored = fit_isotonic(p, y)
    q = np.stack(
        [
            IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p[:, c], y == c).predict(p[:, c])
            for c in range(p.shape[1])
        ],
        axis=1,
    )
    q = np.clip(q, OVR_EPS, None)
    assert np.allclose(stored.apply(p), q / q.sum(1, keepdims=True), atol=1e-12)
    # A round trip through JSON-like dicts changes nothing.
    assert np.array_equal(Calibrator.from_dict(stored.to_dict()).apply(p), stored.apply(p))


def test_identity_and_unknown_kinds() -> None:
    p = np.array([[0.7, 0.2, 0.1]])
    assert np.allclose(Calibrator("none").apply(p), p)
    assert Calibrator("none").apply(p[0]).shape == (3,)
    with pytest.raises(ValueError, match="unknown calibrator"):
        Calibrator("platt")
