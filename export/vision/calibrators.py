"""Fitting the calibrators of contracts/calibrators.py on aggregated per-image distributions.

Scaling calibrators (temperature, vector, Dirichlet) and beta calibration minimise the mean
negative log-likelihood with SciPy's L-BFGS and analytic gradients; isotonic regression is
scikit-learn's. Every fit returns a `contracts.calibrators.Calibrator`, so what is measured here
is exactly what the gateway applies (numpy only).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.isotonic import IsotonicRegression

from contracts.calibrators import OVR_EPS, Calibrator, log_probs, softmax_rows

FITTED = ("temperature", "vector", "dirichlet", "isotonic", "beta")
ODIR_LAMBDA = 1e-2  # Dirichlet: off-diagonal and intercept L2 (Kull et al. 2019), per entry
VECTOR_LAMBDA = 1e-3  # vector scaling: L2 pulling w to 1 and b to 0


def _onehot(labels: np.ndarray, classes: int) -> np.ndarray:
    y = np.zeros((len(labels), classes))
    y[np.arange(len(labels)), labels] = 1.0
    return y


def _lbfgs(fun, x0: np.ndarray, bounds=None) -> np.ndarray:  # type: ignore[no-untyped-def]
    res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 2000})
    return res.x


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    """argmin_T NLL(softmax(log p / T)), optimised over log T."""
    z, y = log_probs(probs), _onehot(labels, probs.shape[1])

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        t = np.exp(x[0])
        q = softmax_rows(z / t)
        loss = -np.mean(np.sum(y * np.log(np.clip(q, 1e-300, None)), axis=1))
        # d loss / d log T = mean Σ (q - y) · z · (−1/T)
        grad = np.mean(np.sum((q - y) * z, axis=1)) * (-1.0 / t)
        return loss, np.array([grad])

    (log_t,) = _lbfgs(f, np.zeros(1), bounds=[(np.log(0.02), np.log(50.0))])
    return Calibrator("temperature", {"temperature": float(np.exp(log_t))})


def fit_vector(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    n, c = probs.shape
    z, y = log_probs(probs), _onehot(labels, c)

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = x[:c], x[c:]
        q = softmax_rows(z * w + b)
        d = (q - y) / n
        loss = -np.sum(y * np.log(np.clip(q, 1e-300, None))) / n
        loss += VECTOR_LAMBDA * (np.sum((w - 1) ** 2) + np.sum(b**2))
        gw = np.sum(d * z, axis=0) + 2 * VECTOR_LAMBDA * (w - 1)
        gb = np.sum(d, axis=0) + 2 * VECTOR_LAMBDA * b
        return loss, np.concatenate([gw, gb])

    x = _lbfgs(f, np.concatenate([np.ones(c), np.zeros(c)]))
    return Calibrator("vector", {"w": x[:c].tolist(), "b": x[c:].tolist()})


def fit_dirichlet(probs: np.ndarray, labels: np.ndarray, lam: float = ODIR_LAMBDA) -> Calibrator:
    """softmax(W log p + b) with ODIR: the off-diagonal of W and b are L2-penalised, the diagonal
    is free, so the map can rescale each class but only borrows across classes when the data insist."""
    n, c = probs.shape
    z, y = log_probs(probs), _onehot(labels, c)
    off = 1.0 - np.eye(c)

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = x[: c * c].reshape(c, c), x[c * c :]
        q = softmax_rows(z @ w.T + b)
        d = (q - y) / n
        loss = -np.sum(y * np.log(np.clip(q, 1e-300, None))) / n
        loss += lam * (np.sum((w * off) ** 2) / (c * (c - 1)) + np.sum(b**2) / c)
        gw = d.T @ z + 2 * lam * (w * off) / (c * (c - 1))
        gb = np.sum(d, axis=0) + 2 * lam * b / c
        return loss, np.concatenate([gw.ravel(), gb])

    x = _lbfgs(f, np.concatenate([np.eye(c).ravel(), np.zeros(c)]))
    return Calibrator("dirichlet", {"W": x[: c * c].reshape(c, c).tolist(), "b": x[c * c :].tolist()})


def fit_isotonic(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    """One increasing curve per class on (p_c, 1[y = c]); stored as scikit-learn's knots."""
    xs, ys = [], []
    for c in range(probs.shape[1]):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
        iso.fit(probs[:, c], (labels == c).astype(np.float64))
        xs.append(iso.X_thresholds_.tolist())
        ys.append(iso.y_thresholds_.tolist())
    return Calibrator("isotonic", {"x": xs, "y": ys})


def fit_beta(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    """Per class, a logistic regression on (ln p, −ln(1 − p)) with a, b ≥ 0 (monotone curves)."""
    pc = np.clip(probs, OVR_EPS, 1.0 - OVR_EPS)
    f1, f2 = np.log(pc), -np.log1p(-pc)
    params: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    for c in range(probs.shape[1]):
        t = (labels == c).astype(np.float64)
        u, v = f1[:, c], f2[:, c]

        def f(x: np.ndarray, u=u, v=v, t=t) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
            s = x[0] * u + x[1] * v + x[2]
            # mean binary NLL, written with logaddexp for stability
            loss = np.mean(np.logaddexp(0.0, s) - t * s)
            r = 1.0 / (1.0 + np.exp(-s)) - t
            return loss, np.array([np.mean(r * u), np.mean(r * v), np.mean(r)])

        a, b, cc = _lbfgs(f, np.array([1.0, 1.0, 0.0]), bounds=[(0.0, None), (0.0, None), (None, None)])
        params["a"].append(float(a))
        params["b"].append(float(b))
        params["c"].append(float(cc))
    return Calibrator("beta", params)


FIT = {
    "temperature": fit_temperature,
    "vector": fit_vector,
    "dirichlet": fit_dirichlet,
    "isotonic": fit_isotonic,
    "beta": fit_beta,
}


def fit_all(probs: np.ndarray, labels: np.ndarray, kinds: tuple[str, ...] = FITTED) -> dict[str, Calibrator]:
    """Every calibrator in `kinds`, plus the identity `none`."""
    out = {"none": Calibrator("none")}
    for kind in kinds:
        out[kind] = FIT[kind](np.asarray(probs, np.float64), np.asarray(labels, np.int64))
    return out
