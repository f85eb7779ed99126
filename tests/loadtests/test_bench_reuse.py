"""The prefix-cache and speculative-decoding benchmark runs end to end on tiny models and writes
its section of the page.

No timing assertions: that every case ran for both models and was reported, that the engine's
own accounting shows the cache hit (the whole system prompt reused) and outputs were identical
with each feature on and off, and that the section lands once between its markers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_run_writes_its_section(tiny_lm_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Generation benchmark\n\nthe generation tables\n")
    cmd = [sys.executable, str(ROOT / "loadtests" / "bench_reuse.py"), "--quick", "--out", str(out)]
    cmd += ["--repository", str(tiny_lm_repo), "--name", "tiny-lm", "--workdir", str(tmp_path / "work")]
    for _ in range(2):  # a second run replaces the section instead of appending another
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=380)
        assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert text.startswith("# Generation benchmark\n\nthe generation tables\n")
    assert text.count("## Prefix caching and speculative decoding") == 1
    assert text.count("<!-- bench-reuse:begin -->") == 1 and text.count("<!-- bench-reuse:end -->") == 1
    assert "load average" in text and "onnxruntime 1." in text

    models = {"tiny-lm", "tiny"}
    prefix = table(text, "| model | prompt tokens | requests |")
    assert {r[0] for r in prefix} == models
    for row in prefix:  # quick profile: BOS + a 40-token system prompt + an 8-token suffix
        assert (row[1], row[3]) == ("49", "41"), row  # every hit reused the whole system prompt
        assert all(float(x) > 0 for cell in row[4:6] for x in cell.split(" / "))

    tenants = table(text, "| model | system prompts |")
    assert {r[0] for r in tenants} == models
    for row in tenants:  # 16 system prompts, 8 slots: only the host tier still holds the next one
        assert row[1] == "16" and row[4] == "1 / 41", row  # slots only: BOS; host tier: the system prompt
        assert row[-1] == "yes", row

    chat = table(text, "| model | turn |")
    assert {(r[0], r[1]) for r in chat} == {(m, str(t)) for m in models for t in (1, 2, 3)}
    for row in chat:  # turn t reuses the previous turn's prompt and reply (all but the reply's last token)
        if row[1] != "1":
            assert int(row[3]) == int(row[2]) - 8 - 1, row
    assert "Replies token-identical with and without the cache: tiny-lm yes, tiny yes." in text

    spec = table(text, "| model | prompts |")
    kinds = ("grounded", "echo", "open-ended")
    assert {(r[0], r[1]) for r in spec} == {(m, k) for m in models for k in kinds}
    assert all(r[-1] == "yes" for r in spec)  # greedy output identical with speculation on and off
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in spec)
    assert "Targets for tiny-lm, tok/s on ÷ off: grounded" in text
