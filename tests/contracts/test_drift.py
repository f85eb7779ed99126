"""PSI and KS against a reference, and calibration.json's version rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contracts.calibration import Calibration
from contracts.drift import DriftReference, drift, ks, psi
from contracts.versions import ContractError


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift() -> None:
    assert psi([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0)
    small, large = psi([50, 50], [55, 45]), psi([50, 50], [90, 10])
    assert 0 < small < 0.05 < 0.25 < large
    assert np.isfinite(psi([50, 50, 0], [0, 50, 50]))  # an unseen class is floored, not infinite


def test_ks_is_the_largest_cdf_gap() -> None:
    ref = np.sort(np.linspace(0, 1, 1001))
    assert ks(ref, np.linspace(0, 1, 501)) < 0.01
    assert ks(ref, np.full(100, 2.0)) == pytest.approx(1.0)
    assert ks(ref, np.linspace(0, 0.5, 500)) == pytest.approx(0.5, abs=0.01)


def test_reference_from_probabilities_and_a_shifted_window() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4) * 0.5, size=2000)
    ref = DriftReference.from_probs(p)
    assert sum(ref.class_counts) == 2000 and list(ref.confidences) == sorted(ref.confidences)
    same = rng.dirichlet(np.ones(4) * 0.5, size=500)
    flat = rng.dirichlet(np.ones(4) * 20, size=500)  # near-uniform: low confidence
    psi_same, ks_same = drift(ref, same.argmax(1), same.max(1))
    _, ks_flat = drift(ref, flat.argmax(1), flat.max(1))
    assert psi_same < 0.05 and ks_same < 0.1 and ks_flat > 0.8


def test_version_1_files_are_refused_with_a_clear_message() -> None:
    v1 = {"temperature": {"single": 1.5}, "conformal": {"method": "lac", "alpha": 0.1, "thresholds": {"single": 0.9}}}
    with pytest.raises(ContractError, match="calibration_version 1.*re-export"):
        Calibration.from_dict(v1)
    with pytest.raises(ContractError, match="calibration_version 1"):
        Calibration.from_dict({**v1, "calibration_version": 1})
    with pytest.raises(ContractError, match="reads version 2"):
        Calibration.from_dict({"calibration_version": 3, "pipelines": {}})


def test_version_2_round_trip(tiny_vision_repo) -> None:  # type: ignore[no-untyped-def]
    path = tiny_vision_repo / "tiny-vit" / "calibration.json"
    cal = Calibration.read(path)
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    for name, pc in cal.pipelines.items():
        other = again.pipelines[name]
        assert other.default == pc.default and np.array_equal(other.holdout_probs, pc.holdout_probs)
        assert other.reference == pc.reference
    with pytest.raises(ContractError, match="defaults to"):
        broken = cal.to_dict()
        broken["pipelines"]["single"]["default"] = "platt"
        Calibration.from_dict(broken)
