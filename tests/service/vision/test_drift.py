"""The drift gauges: in-distribution traffic stays below the alert thresholds, shifted traffic
(inverted scenes) crosses them, on the real app with a real exported classifier."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from contracts.drift import DriftReference
from export.vision.data import make_scenes
from service.app import create_app
from service.metrics import Metrics
from service.settings import Settings
from service.vision.drift import DriftMonitor
from tests.conftest import build_tiny_vision_repo, wait_ready
from tests.service.vision.images import encode

RULES = Path(__file__).resolve().parents[3] / "deploy" / "prometheus" / "kiln.rules.yml"
WINDOW = 300


def thresholds() -> dict[str, float]:
    """The alert thresholds, read from the rules file so the test follows them."""
    out = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            m = re.search(r"\((kiln_classify_drift_\w+)\)\s*>\s*([\d.]+)", rule.get("expr", ""))
            if m:
                out[m[1]] = float(m[2])
    assert set(out) == {"kiln_classify_drift_psi", "kiln_classify_drift_ks"}, out
    return out


def gauges(client: TestClient, pipeline: str = "multi") -> dict[str, float]:
    text = client.get("/metrics").text
    found = {}
    for name in ("kiln_classify_drift_psi", "kiln_classify_drift_ks", "kiln_classify_drift_window_images"):
        m = re.search(rf'^{name}{{model="drift-vit",pipeline="{pipeline}"}} (\S+)$', text, re.M)
        if m:
            found[name] = float(m[1])
    return found


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    # A calibration split of 600 scenes (60 digits × 10), so the reference is a real distribution.
    repo = build_tiny_vision_repo(tmp_path_factory.mktemp("drift"), name="drift-vit", per_source=10, source_limit=60)
    settings = Settings(
        model_repository=repo,
        grpc_port=0,
        classify_drift_window=WINDOW,
        classify_drift_min_images=WINDOW,
        classify_drift_period_s=0,
        classify_max_images=16,
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def classify(client: TestClient, pixels: list[np.ndarray], query: str = "") -> None:
    for i in range(0, len(pixels), 16):
        files = [("file", (f"{j}.png", encode(p), "image/png")) for j, p in enumerate(pixels[i : i + 16])]
        r = client.post(f"/classify{query}", files=files)
        assert r.status_code == 200, r.text


def test_in_distribution_stays_quiet_and_shifted_traffic_crosses_the_thresholds(client: TestClient) -> None:
    limit = thresholds()
    scenes = [s.pixels for s in make_scenes("test", 5, seed=0, limit=60)][:WINDOW]  # digits calibration never saw
    classify(client, scenes[: WINDOW // 2])
    assert gauges(client) == {}, "no gauges before the window holds KILN_CLASSIFY_DRIFT_MIN_IMAGES images"
    classify(client, scenes[WINDOW // 2 :])
    calm = gauges(client)
    assert calm["kiln_classify_drift_window_images"] == WINDOW
    assert calm["kiln_classify_drift_psi"] < limit["kiln_classify_drift_psi"]
    assert calm["kiln_classify_drift_ks"] < limit["kiln_classify_drift_ks"]
    # Requests made another way than the reference (another aggregation) are not recorded.
    classify(client, [255 - p for p in scenes[:32]], "?aggregate=mean")
    assert gauges(client) == calm
    # The same scenes inverted: the window fills with shifted images and the gauges cross the thresholds.
    classify(client, [255 - p for p in scenes])
    shifted = gauges(client)
    print("drift gauges", calm, shifted)
    assert shifted["kiln_classify_drift_ks"] > limit["kiln_classify_drift_ks"], (calm, shifted)
    assert (
        max(
            shifted["kiln_classify_drift_psi"] / limit["kiln_classify_drift_psi"],
            shifted["kiln_classify_drift_ks"] / limit["kiln_classify_drift_ks"],
        )
        > 1
    )
    # Other pipelines have their own windows (nothing recorded for multi_flip yet).
    assert gauges(client, "multi_flip") == {}


def test_monitor_window_period_and_minimum() -> None:
    rng = np.random.default_rng(0)
    ref_probs = rng.dirichlet(np.ones(3), size=1000)
    metrics = Metrics()
    monitor = DriftMonitor(
        "m", {"multi": DriftReference.from_probs(ref_probs)}, metrics, window=100, min_images=50, period_s=10
    )
    monitor.record("multi", rng.dirichlet(np.ones(3), size=40), now=0.0)
    assert "multi" not in monitor.last  # fewer than min_images
    monitor.record("multi", rng.dirichlet(np.ones(3), size=20), now=1.0)
    psi, ks = monitor.last["multi"]
    assert psi < 0.1 and ks < 0.2
    monitor.record("multi", np.tile([[0.0, 0.0, 1.0]], (100, 1)), now=5.0)  # within the period: not recomputed
    assert monitor.last["multi"] == (psi, ks)
    monitor.record("multi", np.tile([[0.0, 0.0, 1.0]], (1, 1)), now=12.0)
    psi2, ks2 = monitor.last["multi"]
    assert psi2 > 1 and ks2 > 0.9  # the window (last 100) now holds only the one-hot class 2
    monitor.record("single", ref_probs[:10])  # a pipeline without a reference is ignored
    assert "single" not in monitor.last
