"""The demo LM is committed (checkpoints/demo-lm) so a fresh `make serve` skips training; this
retrains it from its own log (seed, phases) and requires the same bytes, step by step.

The whole schedule (640 steps at 32 x 128, then 320 at 8 x 512) takes about 15 quiet minutes,
too long for every `make test`: the check trains the first phase and the first 41 steps of the
second, and requires each logged step's weights (sha256) to be the committed log's. The rest of
the second phase runs the same code at later learning rates; `KILN_FULL_RETRAIN=1` checks it too,
down to the bytes of model.safetensors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from export.train_demo.corpus import load_corpus
from export.train_demo.lm import reproducible, train_demo_lm

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # ~6 quiet minutes (~16 for the full retrain)

COMMITTED = Path(__file__).resolve().parents[3] / "checkpoints" / "demo-lm"
CHECKED_LONG_STEPS = 41  # the long phase's log entries at steps 0 and 40


def test_retraining_reproduces_the_committed_demo_lm(tmp_path: Path) -> None:
    log = json.loads((COMMITTED / "train_log.json").read_text())
    corpus = load_corpus()
    if (len(corpus.train_files), len(corpus.val_files)) != (log["train_files"], log["val_files"]):
        pytest.skip(
            f"this Python's standard library ({len(corpus.train_files)} train / {len(corpus.val_files)} val files) "
            f"is not the corpus the committed checkpoint was trained on ({log['train_files']} / {log['val_files']})"
        )
    first, long = log["phases"]
    full = os.environ.get("KILN_FULL_RETRAIN") == "1"
    stop = None if full else first["steps"] + CHECKED_LONG_STEPS
    out = tmp_path / "demo-lm"
    summary = train_demo_lm(out, seed=log["seed"], steps=first["steps"], long_steps=long["steps"], stop_after=stop)
    for name in ("config.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (COMMITTED / name).read_bytes(), f"{name} differs from the committed one"
    assert summary["phases"] == log["phases"]
    retrained = reproducible(summary["log"])
    assert retrained == reproducible(log["log"])[: len(retrained)], "a logged step's weights or losses differ"
    if full:
        assert (out / "model.safetensors").read_bytes() == (COMMITTED / "model.safetensors").read_bytes()
        assert summary["final_val_loss"] == log["final_val_loss"]
    else:  # the check reached into the long phase
        assert [(e["phase"], e["step"]) for e in retrained][-2:] == [(1, 0), (1, 40)]
