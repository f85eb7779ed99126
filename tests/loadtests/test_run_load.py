"""`loadtests/run_load.py` end to end on the tiny model: real locust, real server, a spike past
capacity that must be shed with 429s while every accepted request completes."""

from __future__ import annotations

import json
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


def test_shared_prefix_mix_is_exact_isolated_and_bounded(tiny_lm_vision_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The shared-prefix scenario: API keys on, the cache hits, the replayed greedy sample matches
    a server without the cache, no probe key sees another key's prefix, and the report says so."""
    doc = tmp_path / "load.md"
    doc.write_text("old results\n\n## Soak\n\n<!-- soak:begin -->\nthe soak table\n<!-- soak:end -->\n")
    cmd = [sys.executable, str(ROOT / "loadtests/run_load.py"), "--repository", str(tiny_lm_vision_repo)]
    cmd += ["--model", "tiny-lm", "--classifier", "tiny-vit", "--scenarios", "prefix", "--seconds", "14"]
    cmd += ["--users", "6", "--max-batch", "4", "--max-queue", "8", "--prefix-chars", "120"]
    cmd += ["--verify-samples", "8", "--out-dir", str(tmp_path / "out"), "--doc", str(doc)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = doc.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| prefix |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert int(cells[3]) == 0 and cells[-1] == "pass"  # no failures: every user authenticated
    assert "/generate [shared prefix]" in text and "/v1/chat/completions [growing history]" in text
    summary = next(line for line in text.splitlines() if line.startswith("- **prefix** (shared prefixes)"))
    assert "speculation off in this scenario) replayed on a server without the cache: 0 differ" in summary
    assert "cached tokens [0]" in summary  # every probe, during and after the load
    assert text.count("<!-- soak:begin -->") == 1 and "the soak table" in text  # the soak's section is kept
    assert not text.startswith("old results")
    samples = [json.loads(line) for line in (tmp_path / "out/prefix_samples.jsonl").read_text().splitlines()]
    assert any(s["cached"] > 0 for s in samples)  # the load's own requests were served from the cache
    assert {s["kind"] for s in samples} == {"generate", "chat"}
    assert len({s["key"] for s in samples}) > 1  # several keys sent prefixes
