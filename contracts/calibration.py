"""`calibration.json`: what export fitted on the calibration split, for the gateway to apply.

Per view pipeline (`single`, `multi`, `multi_flip`) a temperature, and a split-conformal
threshold for the method and miscoverage `alpha` it was fitted for. Applying them needs
numpy only (contracts/aggregate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from contracts.manifest import read_json, write_json
from contracts.versions import check_version

CALIBRATION_VERSION = 1
PIPELINES = ("single", "multi", "multi_flip")


@dataclass(frozen=True)
class Conformal:
    method: str  # "lac" | "aps"
    alpha: float
    thresholds: dict[str, float]  # pipeline -> q̂

    @property
    def coverage_target(self) -> float:
        return 1.0 - self.alpha


@dataclass(frozen=True)
class Calibration:
    temperature: dict[str, float]  # pipeline -> T
    conformal: Conformal
    fitted_on: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        c = self.conformal
        return {
            "calibration_version": CALIBRATION_VERSION,
            "fitted_on": dict(self.fitted_on),
            "temperature": dict(self.temperature),
            "conformal": {
                "method": c.method,
                "alpha": c.alpha,
                "coverage_target": c.coverage_target,
                "thresholds": dict(c.thresholds),
            },
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "calibration.json") -> Calibration:
        check_version(data, "calibration_version", CALIBRATION_VERSION, source, default=1)
        conformal = data["conformal"]
        return cls(
            temperature={str(k): float(v) for k, v in data["temperature"].items()},
            conformal=Conformal(
                method=str(conformal["method"]),
                alpha=float(conformal["alpha"]),
                thresholds={str(k): float(v) for k, v in conformal["thresholds"].items()},
            ),
            fitted_on=dict(data.get("fitted_on", {})),
        )

    def write(self, path: Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: Path) -> Calibration:
        return cls.from_dict(read_json(path), str(path))
