"""Aggregations over views and conformal prediction sets."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.aggregate import AGGREGATIONS, aggregate, prediction_set, softmax

U = [0.25, 0.25, 0.25, 0.25]
# One tile sees class 2 clearly, three views see nothing, one is mildly wrong.
VIEWS = np.array([U, U, U, [0.02, 0.02, 0.94, 0.02], [0.1, 0.5, 0.2, 0.2]])


@pytest.mark.parametrize("method", AGGREGATIONS)
def test_every_aggregation_is_a_distribution_that_finds_the_object(method: str) -> None:
    out = aggregate(VIEWS, method, k=2)
    assert out.shape == (4,) and out.sum() == pytest.approx(1.0)
    assert out.argmax() == 2


def test_aggregations_differ_as_defined() -> None:
    mean = aggregate(VIEWS, "mean")
    assert mean == pytest.approx(VIEWS.mean(0))
    mx = aggregate(VIEWS, "max")
    assert mx == pytest.approx(VIEWS.max(0) / VIEWS.max(0).sum())
    top2 = aggregate(VIEWS, "topk_mean", k=2)
    expected = np.sort(VIEWS, 0)[-2:].mean(0)
    assert top2 == pytest.approx(expected / expected.sum())
    cw = aggregate(VIEWS, "confidence_weighted")
    assert cw[2] > mean[2]  # uniform views carry (almost) no weight
    assert cw[2] > 0.8


def test_softmax_temperature() -> None:
    z = np.array([[2.0, 1.0, 0.0]])
    assert softmax(z).sum() == pytest.approx(1.0)
    assert softmax(z, 2.0)[0, 0] < softmax(z)[0, 0]
    assert softmax(np.array([[1000.0, 0.0]]))[0, 0] == pytest.approx(1.0)  # no overflow


def test_prediction_sets() -> None:
    p = np.array([0.6, 0.25, 0.1, 0.05])
    assert prediction_set(p, 0.5, "lac") == [0]  # keep p >= 0.5
    assert prediction_set(p, 0.8, "lac") == [0, 1]  # keep p >= 0.2
    assert prediction_set(p, 0.01, "lac") == [0]  # never empty
    assert prediction_set(p, 0.8, "aps") == [0]  # 0.6 + 0.25 would pass 0.8
    assert prediction_set(p, 0.9, "aps") == [0, 1]
    assert prediction_set(p, 0.5, "aps") == [0]  # never empty
    with pytest.raises(ValueError):
        prediction_set(p, 0.5, "vote")
