"""bench_step: ratios paired within each worker process, the table, and a smoke run end to end.

No timing assertions: the smoke run checks that every case ran in every process and that the
section lands in the page without disturbing the page's other sections.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import bench_step

ROOT = Path(__file__).resolve().parents[2]


def test_speed_is_paired_per_round_within_a_process_then_the_median_over_processes() -> None:
    # Process A: the reference is twice as slow in both rounds, though its rounds differ 2x
    # from each other; process B: equal. Unpaired medians would mix A's two rounds.
    a = {"1": {"ort-genai": [2.0, 8.0], "kiln-int4": [1.0, 4.0]}}
    b = {"1": {"ort-genai": [3.0, 3.0], "kiln-int4": [3.0, 3.0]}}
    c = {"1": {"ort-genai": [3.0, 3.0], "kiln-int4": [2.0, 2.0]}}
    summary = bench_step.summarize([a, b, c], ["kiln-int4", "ort-genai"])
    speed = summary[1]["speed"]["kiln-int4"]
    assert speed == {"median": 1.5, "min": 1.0, "max": 2.0}
    assert summary[1]["ms"] == {"kiln-int4": 2.5, "ort-genai": 3.0}  # every block of every process
    assert "ort-genai" not in summary[1]["speed"]  # the reference is not compared with itself
    assert summary[1]["isolated"] == {}  # no og-graph or asym case ran: nothing isolated


def test_the_graph_comparison_pairs_kiln_with_the_og_graph_in_the_same_loop() -> None:
    a = {"1": {"ort-genai": [4.0], "og-graph": [3.0], "kiln-int4": [2.0]}}
    summary = bench_step.summarize([a], ["kiln-int4", "og-graph", "ort-genai"])
    assert summary[1]["isolated"]["kiln-int4 vs og-graph"]["median"] == 1.5
    assert summary[1]["isolated"]["og-graph vs ort-genai"]["median"] == pytest.approx(4 / 3)
    assert "kiln-int4-asym vs kiln-int4" not in summary[1]["isolated"]


def test_the_table_has_a_row_per_model_and_batch_with_every_case() -> None:
    processes = [{"1": {"ort-genai": [2.0], "kiln-int4": [1.0]}, "8": {"ort-genai": [4.0], "kiln-int4": [5.0]}}]
    summary = bench_step.summarize(processes, ["kiln-int4", "ort-genai"])
    meta = {"date": "d", "processes": 1, "rounds": 1, "cpu": "cpu", "threads": 2, "versions": {}}
    meta |= {"load_before": "0", "load_after": "0"}
    rows = [ln for ln in bench_step.render(meta, {"30M": summary}, ["kiln-int4", "ort-genai"]).splitlines()]
    table = [ln for ln in rows if ln.startswith("| 30M")]
    assert table == [
        "| 30M | 1 | 1.000 | 2.000 | 2.00× [2.00–2.00] |",
        "| 30M | 8 | 5.000 | 4.000 | 0.80× [0.80–0.80] |",
    ]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_smoke_run_writes_its_section_and_keeps_the_others(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    if importlib.util.find_spec("onnxruntime_genai") is None:
        pytest.skip("onnxruntime-genai is the reference: pip install -e '.[bench]'")
    out = tmp_path / "benchmarks.md"
    other = "## Context length\n\n<!-- bench-context:begin -->\nbench_context.py's\n<!-- bench-context:end -->\n"
    out.write_text(f"# Generation benchmark\n\n{other}")
    cmd = [sys.executable, str(ROOT / "loadtests" / "bench_step.py"), "--models", "tiny", "--batches", "1,2"]
    cmd += ["--processes", "2", "--rounds", "1", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=380)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert other in text  # another benchmark's section stays as it was
    assert bench_step.HEADING in text and text.count(bench_step.BEGIN) == 1
    section = text.split(bench_step.BEGIN)[1].split(bench_step.END)[0]
    assert "2 worker processes × 1 rounds" in section
    speeds, isolated = section.split("What each pair of cases isolates")
    rows = [ln.strip("| ").split(" | ") for ln in speeds.splitlines() if ln.startswith("| tiny")]
    assert [r[1] for r in rows] == ["1", "2"]
    for row in rows:  # every case's step time, then three speeds against onnxruntime-genai
        assert len(row) == 2 + len(bench_step.CASES) + len(bench_step.CASES) - 1
        assert all(float(ms) > 0 for ms in row[2 : 2 + len(bench_step.CASES)])
        assert all(cell.endswith("]") and "× [" in cell for cell in row[2 + len(bench_step.CASES) :])
    pairs = [ln.strip("| ").split(" | ") for ln in isolated.splitlines() if ln.startswith("| tiny")]
    assert [len(r) for r in pairs] == [2 + len(bench_step.COMPARISONS)] * 2
