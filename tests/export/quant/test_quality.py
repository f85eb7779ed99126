"""Perplexity and KL on the fused contract (decoding, as served), and the budget check."""

from __future__ import annotations

import json

import pytest

from export.checkpoint import load_checkpoint
from export.quant.quality import QuantBudgetError, check_budgets, fused_quality
from export.variants import perplexity, token_windows
from tests.conftest import TINY_TEXT


def test_decoding_the_fused_graph_gives_the_standard_graphs_perplexity(tiny_quant_lm_repo) -> None:
    entry = tiny_quant_lm_repo / "tiny-lm"
    manifest = json.loads((entry / "kiln.json").read_text())
    ckpt = load_checkpoint(tiny_quant_lm_repo.parent / "checkpoints" / "tiny-lm")
    cfg = ckpt.config
    windows = token_windows(ckpt.tokenizer, TINY_TEXT, cfg.bos_token_id, 40, 400)
    assert len({len(w) for w in windows}) > 1  # rows of different lengths leave the batch at different steps
    graphs = {k: entry / manifest["files"][k] for k in ("fused", "int8", "int4")}
    got = fused_quality(graphs, windows, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, reference="fused")
    standard = perplexity(entry / manifest["files"]["fp32"], windows, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim)
    assert got["fused"]["perplexity"] == pytest.approx(standard, rel=1e-5)
    assert got["fused"]["mean_kl"] == 0 and got["fused"]["top1_agreement"] == 1
    assert got["fused"]["tokens"] == sum(len(w) - 1 for w in windows)
    assert 0 < got["int8"]["mean_kl"] < got["int4"]["mean_kl"]  # fewer bits, further from fp32


def test_budget_check_names_every_variant_over_budget() -> None:
    measured = {"fp32": {"perplexity": 10.0}, "int8": {"perplexity": 10.04}, "int4": {"perplexity": 11.0}}
    budgets = {"int8": (0.5, "--int8-ppl-budget"), "int4": (8.0, "--int4-ppl-budget")}
    with pytest.raises(QuantBudgetError) as info:
        check_budgets(measured, budgets, "fp32")
    message = str(info.value)
    assert "int4 perplexity 11.0000 is +10.000% over fp32's 10.0000 (budget +8%, --int4-ppl-budget)" in message
    assert "int8 perplexity" not in message  # within its budget: not named
    ok = check_budgets(measured, {"int8": (0.5, "x"), "int4": (12.0, "y")}, "fp32")
    assert ok["int8"]["passed"] and ok["int4"]["increase_pct"] == pytest.approx(10.0)
