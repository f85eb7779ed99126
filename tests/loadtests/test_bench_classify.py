"""The classification benchmark runs end to end on the tiny classifier and writes its table.

No timing assertions: only that every row ran and was reported against the model-only limit.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_run_writes_the_table(tiny_vision_repo: Path, tmp_path: Path) -> None:
    from loadtests.classify_peers import triton_reason

    out = tmp_path / "vision.md"
    cmd = [sys.executable, str(ROOT / "loadtests" / "bench_classify.py")]
    cmd += ["--repository", str(tiny_vision_repo), "--name", "tiny-vit"]
    cmd += ["--checkpoint", str(tiny_vision_repo.parent / "checkpoints" / "tiny-vit")]
    cmd += ["--clients", "1,2", "--images", "8", "--naive-images", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=380)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert "<!-- bench:begin -->" in text and "load average" in text
    split = re.search(r"at 2 clients, per image .*: the server ([0-9.]+) core-ms, .* generator .* ([0-9.]+);", text)
    assert split and float(split[1]) > 0, text  # the server's CPU per image, measured
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| **model only**") and r.endswith("| 1.00× |") for r in rows)
    paths = {"Kiln `/classify`": 2, "naive PyTorch": 2, "Triton dynamic batcher": 0 if triton_reason() else 2}
    for path, count in paths.items():
        assert sum(r.startswith(f"| {path}") for r in rows) == count, (path, rows)
