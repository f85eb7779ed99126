"""`make soak` in miniature: ~25 s of the mixed load on the tiny models. It samples the server's
resident memory and open descriptors, reports start / end / max / slope, and replaces its own
section of the page. No flatness assertion: 25 s of a warming-up server says nothing about it."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_short_soak_samples_and_reports(tiny_lm_vision_repo: Path, tmp_path: Path) -> None:
    doc = tmp_path / "load.md"
    doc.write_text("# Load test results\n\nthe load table\n\n## Soak\n\n<!-- soak:begin -->\nold\n<!-- soak:end -->\n")
    cmd = [sys.executable, str(ROOT / "loadtests/soak.py"), "--repository", str(tiny_lm_vision_repo)]
    cmd += ["--model", "tiny-lm", "--classifier", "tiny-vit", "--minutes", "0.4", "--users", "6"]
    cmd += ["--max-batch", "4", "--max-queue", "8", "--prefix-chars", "120", "--verify-samples", "4"]
    cmd += ["--sample-s", "1", "--warmup-s", "5", "--max-rss-slope", "1e6", "--max-fd-slope", "1e6"]
    cmd += ["--out-dir", str(tmp_path / "out"), "--doc", str(doc)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = doc.read_text()
    assert text.startswith("# Load test results\n\nthe load table\n")
    assert text.count("## Soak") == 1 and text.count("<!-- soak:begin -->") == 1 and "\nold\n" not in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| RSS MB |")}
    rows |= {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| open fds |")}
    for name in ("RSS MB", "open fds"):
        start, end, peak, slope = (float(c) for c in rows[name].strip("|").split("|")[1:5])
        assert 0 < start <= peak and 0 < end <= peak, rows[name]
    assert "checks: pass" in text and "0 failed" in text
    with open(tmp_path / "out/soak_memory.csv") as f:
        series = list(csv.DictReader(f))
    assert len(series) >= 15  # one a second over ~25 s
    assert all(float(s["rss_mb"]) > 50 and int(s["open_fds"]) > 3 for s in series)
    assert float(series[-1]["seconds"]) >= 24
    minutes = [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 4][1:]
    assert len(minutes) >= 10  # the time table
