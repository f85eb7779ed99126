"""The context-length benchmark runs end to end on tiny models and writes its section.

No timing assertions: only that every (model, batch, context) case ran and was reported, and that
the section lands between its markers without disturbing the rest of the page.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Generation benchmark\n\nthe generation tables\n")
    cmd = [sys.executable, str(ROOT / "loadtests" / "bench_context.py"), "--quick", "--out", str(out)]
    for _ in range(2):  # a second run replaces the section instead of appending another
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)
        assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert text.startswith("# Generation benchmark\n\nthe generation tables\n")
    assert text.count("## Context length") == 1 and text.count("<!-- bench-context:begin -->") == 1
    rows = [line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| ") and "ms |" not in line]
    assert {(r[0], r[3]) for r in rows} == {(m, b) for m in ("llama", "mamba", "hybrid") for b in ("1", "8")}
    assert all(float(cell) > 0 for r in rows for cell in r[4:8])
    assert "Target: Mamba's step stays flat" in text
