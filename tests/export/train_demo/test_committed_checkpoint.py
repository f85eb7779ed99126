"""The demo LM is committed (checkpoints/demo-lm) so a fresh `make serve` skips training; this
retrains it from its own log (seed, steps) and requires the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.train_demo.corpus import load_corpus
from export.train_demo.lm import train_demo_lm

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # 640 training steps: ~5 quiet minutes

COMMITTED = Path(__file__).resolve().parents[3] / "checkpoints" / "demo-lm"


def test_retraining_reproduces_the_committed_demo_lm(tmp_path: Path) -> None:
    log = json.loads((COMMITTED / "train_log.json").read_text())
    corpus = load_corpus()
    if (len(corpus.train_files), len(corpus.val_files)) != (log["train_files"], log["val_files"]):
        pytest.skip(
            f"this Python's standard library ({len(corpus.train_files)} train / {len(corpus.val_files)} val files) "
            f"is not the corpus the committed checkpoint was trained on ({log['train_files']} / {log['val_files']})"
        )
    out = tmp_path / "demo-lm"
    summary = train_demo_lm(out, seed=log["seed"], steps=log["planned_steps"])
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (out / name).read_bytes() == (COMMITTED / name).read_bytes(), f"{name} differs from the committed one"
    assert summary["final_val_loss"] == log["final_val_loss"]
