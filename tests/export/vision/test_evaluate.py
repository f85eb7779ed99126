"""`make eval` end to end on the tiny classifier: every table, both figures, from one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.vision.evaluate import ALPHAS, main


@pytest.mark.slow
def test_eval_writes_every_table_and_both_figures(tiny_vision_repo: Path, tmp_path: Path) -> None:
    doc = tmp_path / "vision.md"
    doc.write_text("# Vision\n\n<!-- eval:begin -->\nSTALE-TABLE\n<!-- eval:end -->\n\ntail\n")
    main(
        [
            "--repository",
            str(tiny_vision_repo),
            "--name",
            "tiny-vit",
            "--out",
            str(doc),
            "--per-source",
            "2",
            "--source-limit",
            "40",
            "--json",
            str(tmp_path / "eval.json"),
        ]
    )
    text = doc.read_text()
    assert text.startswith("# Vision") and text.rstrip().endswith("tail") and "STALE-TABLE" not in text
    headings = ("Top-1 accuracy", "Calibrators", "Conformal prediction sets", "re-splits", "Drift statistics")
    for heading in (*headings, "How big a test split is meaningful"):
        assert heading in text, heading
    for name in ("none", "temperature", "vector", "dirichlet", "isotonic", "beta"):
        assert f"| {name}" in text
    for method in ("LAC", "APS (randomised)", "RAPS randomised"):
        assert method in text
    assert all(f"α={a}" in text for a in ALPHAS)
    for png in ("vision_reliability.png", "vision_risk_coverage.png"):
        assert f"]({png})" in text
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"conformal"' in (tmp_path / "eval.json").read_text()


def test_drift_alert_columns_use_the_rule_thresholds() -> None:
    import re

    from export.vision.evaluate import KS_ALERT, PSI_ALERT

    rules = (Path(__file__).resolve().parents[3] / "deploy/prometheus/kiln.rules.yml").read_text()
    assert float(re.search(r"\(kiln_classify_drift_psi\) > ([\d.]+)", rules)[1]) == PSI_ALERT
    assert float(re.search(r"\(kiln_classify_drift_ks\) > ([\d.]+)", rules)[1]) == KS_ALERT
