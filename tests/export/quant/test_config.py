"""Quantization settings: bad values are refused naming the key and its `kiln export` flag."""

from __future__ import annotations

import pytest

from cli.main import main
from export.quant.config import QuantConfig, QuantConfigError
from export.quant.quality import QuantBudgetError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 48}, r"quant.block_size 48 \(--quant-block-size\)"),
        ({"block_size": 8}, "power of two >= 16"),
        ({"accuracy_level": 5}, r"quant.accuracy_level 5 \(--quant-accuracy-level\)"),
        ({"int4_algorithm": "awq"}, r"quant.int4_algorithm 'awq' \(--int4-algorithm\): one of rtn, gptq"),
        ({"head_bits": 2}, r"quant.head_bits 2 \(--int4-head-bits\)"),
        ({"calibration_tokens": 0}, "calibration_tokens"),
    ],
)
def test_unsupported_values_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(QuantConfigError, match=message):
        QuantConfig(**kwargs)


def test_a_block_size_that_does_not_divide_the_model_is_refused() -> None:
    QuantConfig(block_size=32).check_shapes({"layers.0.qkv.w": 96, "layers.0.down.w": 160})
    with pytest.raises(QuantConfigError, match="does not divide the input dimension 160 of layers.0.down.w"):
        QuantConfig(block_size=64).check_shapes({"layers.0.qkv.w": 192, "layers.0.down.w": 160})


def test_kiln_export_flags_reach_export_checkpoint(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seen: dict = {}

    def fake_export(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs)
        return {"summary": {}}

    import export.pipeline

    monkeypatch.setattr(export.pipeline, "export_checkpoint", fake_export)
    flags = ["--int4-algorithm", "rtn", "--int4-head-bits", "4", "--quant-block-size", "64", "--quant-asymmetric"]
    flags += ["--int8-ppl-budget", "0.25", "--int4-ppl-budget", "3", "--quant-accuracy-level", "0"]
    main(["export", "--checkpoint", str(tmp_path), *flags])
    assert seen["quant"] == QuantConfig(
        int4_algorithm="rtn",
        head_bits=4,
        block_size=64,
        symmetric=False,
        int8_budget_pct=0.25,
        int4_budget_pct=3.0,
        accuracy_level=0,
    )
    main(["export", "--checkpoint", str(tmp_path)])
    assert seen["quant"] == QuantConfig()  # no flag: the documented defaults


def test_kiln_export_reports_a_missed_budget_or_bad_flag_in_one_line(monkeypatch, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import export.pipeline

    def over_budget(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise QuantBudgetError("quantized variants over their perplexity budget: int4 ...")

    monkeypatch.delenv("KILN_DEBUG", raising=False)
    monkeypatch.setattr(export.pipeline, "export_checkpoint", over_budget)
    assert main(["export", "--checkpoint", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("kiln export: error: quantized variants over their perplexity budget") and err.count("\n") == 1
    )
    assert main(["export", "--checkpoint", str(tmp_path), "--quant-block-size", "24"]) == 1
    assert capsys.readouterr().err.startswith("kiln export: error: quant.block_size 24 (--quant-block-size)")
