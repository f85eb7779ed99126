"""Post-hoc calibrators, applied with numpy only: what export fitted, the gateway applies.

Every calibrator maps a batch of aggregated per-image distributions p [N, C] to calibrated ones.
Export fits them with SciPy and scikit-learn (export/vision/calibrators.py); their parameters
live in calibration.json and this module is the only definition of how they are applied, so
export's evaluation and the gateway cannot disagree.

- none: p unchanged.
- temperature: softmax(log p / T) (Guo et al. 2017; for one view exactly logits / T).
- vector: softmax(w ⊙ log p + b), one scale and bias per class.
- dirichlet: softmax(W log p + b), a full C×C map (Kull et al. 2019, with ODIR regularisation).
- isotonic: per class a monotone curve p_c → P(y = c), stored as knots and applied with
  np.interp, then renormalised (one-vs-rest; Zadrozny & Elkan 2002).
- beta: per class σ(a ln p_c − b ln(1 − p_c) + c), then renormalised (Kull et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("none", "temperature", "vector", "dirichlet", "isotonic", "beta")
EPS = 1e-12  # log p floor: aggregated probabilities are never exactly 0, but stored ones may round to it
OVR_EPS = 1e-6  # one-vs-rest outputs are floored at this before renormalising, so no class gets exactly 0


def softmax_rows(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_probs(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(p, np.float64), EPS, 1.0))


def _renormalise(q: np.ndarray) -> np.ndarray:
    q = np.clip(q, OVR_EPS, None)
    return q / q.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibrator: its kind and its parameters (lists of floats, as stored in JSON)."""

    kind: str
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown calibrator kind {self.kind!r}; one of {list(KINDS)}")

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """[N, C] or [C] distributions → calibrated, same shape, rows summing to 1."""
        p = np.asarray(probs, np.float64)
        one = p.ndim == 1
        p = p[None, :] if one else p
        out = _APPLY[self.kind](p, self.params)
        return out[0] if one else out

    def to_dict(self) -> dict:
        return {"kind": self.kind, **self.params}

    @classmethod
    def from_dict(cls, d: dict) -> Calibrator:
        return cls(str(d["kind"]), {k: v for k, v in d.items() if k != "kind"})


def _none(p: np.ndarray, _: dict) -> np.ndarray:
    return p / p.sum(axis=-1, keepdims=True)


def _temperature(p: np.ndarray, params: dict) -> np.ndarray:
    return softmax_rows(log_probs(p) / float(params["temperature"]))


def _vector(p: np.ndarray, params: dict) -> np.ndarray:
    return softmax_rows(log_probs(p) * np.asarray(params["w"]) + np.asarray(params["b"]))


def _dirichlet(p: np.ndarray, params: dict) -> np.ndarray:
    return softmax_rows(log_probs(p) @ np.asarray(params["W"]).T + np.asarray(params["b"]))


def _isotonic(p: np.ndarray, params: dict) -> np.ndarray:
    q = np.stack(
        [
            np.interp(p[:, c], np.asarray(x), np.asarray(y))
            for c, (x, y) in enumerate(zip(params["x"], params["y"], strict=True))
        ],
        axis=1,
    )
    return _renormalise(q)


def _beta(p: np.ndarray, params: dict) -> np.ndarray:
    pc = np.clip(p, OVR_EPS, 1.0 - OVR_EPS)
    a, b, c = (np.asarray(params[k]) for k in ("a", "b", "c"))
    z = a * np.log(pc) - b * np.log1p(-pc) + c
    return _renormalise(1.0 / (1.0 + np.exp(-z)))


_APPLY = {
    "none": _none,
    "temperature": _temperature,
    "vector": _vector,
    "dirichlet": _dirichlet,
    "isotonic": _isotonic,
    "beta": _beta,
}
