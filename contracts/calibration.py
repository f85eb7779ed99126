"""`calibration.json`: what export fitted on the calibration split, for the gateway to apply.

Version 2. Per view pipeline (`single`, `multi`, `multi_flip`):

- `calibrators`: every fitted calibrator (contracts/calibrators.py) and `default`, the one with
  the lowest NLL on the validation part of the calibration split (`selection` lists them all);
- `holdout`: that validation part's uncalibrated aggregated distributions and labels. The
  calibrators never saw it, so the conformal scores of any calibrator, method (LAC, APS, RAPS
  with any k_reg and λ, randomised or not) and α are computed from it on demand;
- `reference`: the predicted-class histogram and sorted confidences on the whole calibration
  split, the baseline of the gateway's drift gauges.

`conformal` holds the request defaults. Version 1 files (one temperature and one conformal
threshold at a single α per pipeline) are refused with a message saying to re-export: they
cannot serve per-request calibrators or α, and a silent half-service would be worse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contracts.calibrators import Calibrator
from contracts.conformal import ConformalMethod, min_alpha, quantile, true_scores
from contracts.drift import DriftReference
from contracts.manifest import read_json
from contracts.versions import ContractError, check_version

CALIBRATION_VERSION = 2
PIPELINES = ("single", "multi", "multi_flip")
SIGNIFICANT_DIGITS = 6  # stored probabilities: both sides compute from the stored values


def _round(x: np.ndarray) -> list:
    return np.vectorize(lambda v: float(f"{v:.{SIGNIFICANT_DIGITS}g}"), otypes=[float])(x).tolist()


@dataclass(frozen=True)
class ConformalDefaults:
    method: str = "lac"
    alpha: float = 0.1
    randomized: bool = False
    k_reg: int = 1
    lam: float = 0.0
    seed: int = 0  # the randomisation of the held-out scores (randomised APS/RAPS)

    def rule(self) -> ConformalMethod:
        return ConformalMethod(self.method, self.randomized, self.k_reg, self.lam)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "alpha": self.alpha,
            "randomized": self.randomized,
            "k_reg": self.k_reg,
            "lambda": self.lam,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ConformalDefaults:
        return cls(
            method=str(d.get("method", "lac")),
            alpha=float(d.get("alpha", 0.1)),
            randomized=bool(d.get("randomized", False)),
            k_reg=int(d.get("k_reg", 1)),
            lam=float(d.get("lambda", 0.0)),
            seed=int(d.get("seed", 0)),
        )


@dataclass(frozen=True)
class PipelineCalibration:
    calibrators: dict[str, Calibrator]  # name -> fitted calibrator; always has "none"
    default: str
    holdout_probs: np.ndarray  # [n, C] uncalibrated aggregated distributions, validation part
    holdout_labels: np.ndarray  # [n]
    reference: DriftReference
    holdout_sources: np.ndarray | None = None  # [n] which source image each came from (evaluation only)
    selection: dict = field(default_factory=dict)  # {"metric": "nll", "scores": {name: value}}
    _scores: dict = field(default_factory=dict, compare=False, repr=False)  # (calibrator, rule key) -> sorted

    @property
    def n_holdout(self) -> int:
        return len(self.holdout_labels)

    def scores(self, calibrator: str, rule: ConformalMethod, seed: int) -> np.ndarray:
        """The held-out images' conformal scores under one calibrator and rule (cached)."""
        key = (calibrator, rule.key)
        if key not in self._scores:
            probs = self.calibrators[calibrator].apply(self.holdout_probs)
            u = np.random.default_rng(seed).random(self.n_holdout) if rule.randomized else None
            self._scores[key] = np.sort(true_scores(probs, self.holdout_labels, rule, u))
        return self._scores[key]

    def qhat(self, calibrator: str, rule: ConformalMethod, alpha: float, seed: int = 0) -> float:
        return quantile(self.scores(calibrator, rule, seed), alpha)

    @property
    def min_alpha(self) -> float:
        return min_alpha(self.n_holdout)

    def to_dict(self) -> dict:
        return {
            "default": self.default,
            "selection": dict(self.selection),
            "calibrators": {k: c.to_dict() for k, c in self.calibrators.items()},
            "holdout": {
                "labels": [int(y) for y in self.holdout_labels],
                "probs": _round(self.holdout_probs),
                **({"sources": [int(s) for s in self.holdout_sources]} if self.holdout_sources is not None else {}),
            },
            "reference": self.reference.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str, pipeline: str) -> PipelineCalibration:
        calibrators = {str(k): Calibrator.from_dict(v) for k, v in d["calibrators"].items()}
        calibrators.setdefault("none", Calibrator("none"))
        default = str(d["default"])
        if default not in calibrators:
            raise ContractError(f"{source}: pipeline {pipeline!r} defaults to {default!r}, which it does not define")
        probs = np.asarray(d["holdout"]["probs"], np.float64)
        labels = np.asarray(d["holdout"]["labels"], np.int64)
        if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
            raise ContractError(f"{source}: pipeline {pipeline!r} has a malformed holdout")
        return cls(
            calibrators=calibrators,
            default=default,
            holdout_probs=probs,
            holdout_labels=labels,
            reference=DriftReference.from_dict(d["reference"]),
            holdout_sources=np.asarray(d["holdout"]["sources"], np.int64) if "sources" in d["holdout"] else None,
            selection=dict(d.get("selection", {})),
        )


@dataclass(frozen=True)
class Calibration:
    pipelines: dict[str, PipelineCalibration]
    conformal: ConformalDefaults = field(default_factory=ConformalDefaults)
    fitted_on: dict = field(default_factory=dict)  # dataset, seed, images, aggregate, grid, overlap

    def to_dict(self) -> dict:
        return {
            "calibration_version": CALIBRATION_VERSION,
            "fitted_on": dict(self.fitted_on),
            "conformal": self.conformal.to_dict(),
            "pipelines": {k: p.to_dict() for k, p in self.pipelines.items()},
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "calibration.json") -> Calibration:
        if data.get("calibration_version", 1) == 1:
            raise ContractError(
                f"{source} is calibration_version 1 (one temperature and one conformal α per pipeline); this "
                "Kiln serves per-request calibrators, conformal methods and α from version 2: re-export the "
                "model with `kiln export`"
            )
        check_version(data, "calibration_version", CALIBRATION_VERSION, source)
        try:
            pipelines = {str(k): PipelineCalibration.from_dict(v, source, k) for k, v in data["pipelines"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ContractError):
                raise
            raise ContractError(f"{source}: malformed calibration ({exc!r})") from exc
        return cls(pipelines, ConformalDefaults.from_dict(data.get("conformal", {})), dict(data.get("fitted_on", {})))

    def write(self, path: Path) -> Path:
        """Compact JSON: the holdout and the reference are ~10⁵ numbers."""
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")))
        return path

    @classmethod
    def read(cls, path: Path) -> Calibration:
        return cls.from_dict(read_json(path), str(path))
