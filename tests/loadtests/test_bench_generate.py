"""The generation benchmark runs end to end in its smoke mode and writes the expected table.

No timing assertions: only that every case ran, produced every token, and was reported.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "loadtests" / "bench_generate.py"


@pytest.mark.slow
@pytest.mark.timeout(540)
def test_quick_run_writes_the_table(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "benchmarks.md"
    other = "## Context length\n\n<!-- bench-context:begin -->\nbench_context.py's table\n<!-- bench-context:end -->"
    other += "\n\n## Prefix caching and speculative decoding\n\n<!-- bench-reuse:begin -->\nbench_reuse.py's\n"
    other += "<!-- bench-reuse:end -->"
    out.write_text(f"# an older run\n\n{other}\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "tiny", "--quick", "--out", str(out), "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=520,  # two Kiln exports (one with the int8/int4 variants) and two model builder runs
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert text.startswith("# Generation benchmark")
    assert "# an older run" not in text and text.rstrip().endswith(other)  # another benchmark's section stays
    assert "## tiny:" in text and "bandwidth bound" in text
    for key in ("CPU:", "date:", "onnxruntime", "memory bandwidth"):
        assert key in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    cases = {(cells[0], cells[1]) for cells in (line.strip("| ").split(" | ") for line in rows)}
    expected = {("transformers", "1"), ("transformers", "2"), ("kiln", "1"), ("kiln", "2")}
    expected |= {("kiln-http", "1"), ("kiln-http", "2")}
    expected |= {
        (case, n) for case in ("kiln-int8", "kiln-int4", "kiln-int4-head8", "kiln-http-int4") for n in ("1", "2")
    }
    if importlib.util.find_spec("onnxruntime_genai") is not None:
        expected |= {(case, n) for case in ("ort-genai", "ort-genai-int4") for n in ("1", "2")}
    assert expected <= cases, sorted(cases)
    # Every sequence of every case produced all its tokens (last column: complete).
    table = [line for line in rows if line.split(" | ")[0].strip("| ") in {c for c, _ in expected}]
    assert all(line.rstrip(" |").endswith("yes") for line in table), table
    assert "Kiln in-process / ort-genai, batch 1" in text or "ort-genai" not in {c for c, _ in expected}
    assert "Kiln HTTP 1 client / Kiln in-process batch 1" in text
    assert "Kiln int4 / Kiln fp32, batch 1" in text and "Kiln HTTP int4 1 client / Kiln int4" in text
    # loadtests/bench_http.py: py-spy on the server, or the reason it was skipped
    assert "**HTTP server profile**" in text
    if shutil.which("py-spy") or Path(sys.executable).with_name("py-spy").exists():
        assert "| event loop |" in text and "µs per token" in text, text
        assert "**HTTP cost per token beside the step**" in text and "- int4, 1 client: decode step" in text
    assert "- Kiln int4 decode step, batch 1:" in text and "- kiln int4 graph:" in text  # the int4 profile


def test_the_http_budget_line_adds_the_loop_and_the_clients_to_the_step() -> None:
    sys.path.insert(0, str(ROOT / "loadtests"))
    import bench_generate

    res = {
        "kiln-int4": [{"batch": 1, "tpot_p50": 1.0, "tok_s": 1000.0}],
        "kiln-http-int4": [{"batch": 1, "client_us_per_token": 150.0, "tok_s": 700.0}],
        "kiln": [{"batch": 1, "tpot_p50": 5.0, "tok_s": 200.0}],
        "kiln-http": [{"batch": 1, "client_us_per_token": None, "tok_s": 190.0}],  # no client CPU: no line
    }
    lines = bench_generate.http_budget(res, {"us_per_token": {"event loop": 100.0}, "clients": 32})
    budget = [line for line in lines if line.startswith("- ")]
    assert budget == [
        "- int4, 1 client: decode step 1000 µs + event loop 100 µs + load generator 150 µs per token: "
        "at most 0.80× in-process on these shared cores; measured 0.70×."
    ]
    assert bench_generate.http_budget(res, {"us_per_token": {}}) == []  # no profile: nothing claimed
