"""`loadtests/run_load.py` end to end on the tiny model: real locust, real server, a spike past
capacity that must be shed with 429s while every accepted request completes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_spike_is_shed_and_nothing_accepted_is_lost(tiny_lm_vision_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    doc = tmp_path / "load.md"
    cmd = [
        sys.executable,
        str(ROOT / "loadtests/run_load.py"),
        "--repository",
        str(tiny_lm_vision_repo),
        "--model",
        "tiny-lm",
        "--classifier",
        "tiny-vit",
        "--scenarios",
        "spike",
        "--seconds",
        "9",
        "--users",
        "6",
        "--max-batch",
        "2",
        "--max-queue",
        "2",
        "--out-dir",
        str(tmp_path / "out"),
        "--doc",
        str(doc),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = doc.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| spike |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert int(cells[2]) > 0  # shed with 429
    assert int(cells[3]) == 0  # no failures among accepted requests
    assert cells[-1] == "pass"
    assert "/classify [" in text  # image traffic was part of the mix
    assert (tmp_path / "out/spike.html").is_file() and (tmp_path / "out/spike_stats.csv").is_file()
