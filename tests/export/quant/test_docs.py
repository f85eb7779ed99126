"""docs/quantization.md is rendered from an export report: every variant's measured numbers appear."""

from __future__ import annotations

import json

from export.quant.docs import render


def test_the_page_carries_the_reports_numbers(tiny_quant_lm_repo) -> None:
    report = json.loads((tiny_quant_lm_repo / "tiny-lm/export_report.json").read_text())
    text = render(report, None, None)
    quality = report["quantization"]["quality"]
    rows = {
        line.split(" | ")[0].strip("| "): line
        for line in text.splitlines()
        if line.startswith("| int") and "-bit" in line
    }
    assert set(rows) == {"int8", "int4", "int4-rtn"}
    for name, row in rows.items():
        assert f"{quality[name]['perplexity']:.4f}" in row and f"{quality[name]['mean_kl']:.2e}" in row
    assert "measured only" in rows["int4-rtn"] and "GPTQ" in rows["int4"]
    assert "## Alternatives" not in text and "## Resident memory" not in text  # no study / memory given
    assert "`--int4-ppl-budget`" in text  # the settings table is generated from QuantConfig
