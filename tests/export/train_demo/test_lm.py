import json
import math

import pytest

from export.train_demo.lm import reproducible, train_demo_lm

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}


def test_demo_training_is_deterministic_under_a_seed_and_logs_validation_loss(tmp_path) -> None:
    kw = dict(steps=4, vocab_size=300, batch_size=2, seq_len=32, eval_every=2, model_overrides=TINY)
    a = train_demo_lm(tmp_path / "a", seed=7, **kw)
    b = train_demo_lm(tmp_path / "b", seed=7, **kw)
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert a["final_val_loss"] == b["final_val_loss"]
    log = json.loads((tmp_path / "a/train_log.json").read_text())
    assert [e["step"] for e in log["log"]] == [0, 2, 3]
    assert all(e["val_loss"] > 0 for e in log["log"])
    assert not log["stopped_early"]


def test_the_long_phase_continues_training_and_a_stopped_run_is_a_prefix_of_the_full_one(tmp_path) -> None:
    kw = dict(steps=3, vocab_size=300, batch_size=2, seq_len=32, eval_every=2, model_overrides=TINY, long_steps=3)
    full = train_demo_lm(tmp_path / "full", seed=7, **kw)
    part = train_demo_lm(tmp_path / "part", seed=7, stop_after=4, **kw)
    assert [(e["phase"], e["step"]) for e in full["log"]] == [(0, 0), (0, 2), (1, 0), (1, 2)]
    assert [p["seq_len"] for p in full["phases"]] == [32, 512] and full["planned_steps"] == 6
    assert (full["steps"], part["steps"], part["planned_steps"]) == (6, 4, 6)
    assert part["tokens_seen"] == 3 * 2 * 32 + 8 * 512
    assert reproducible(part["log"]) == reproducible(full["log"][:3])
    assert len({e["weights_sha256"] for e in full["log"]}) == 4  # every logged step moved the weights
    assert (tmp_path / "full/model.safetensors").read_bytes() != (tmp_path / "part/model.safetensors").read_bytes()


def test_a_window_longer_than_the_model_s_positions_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="512-token training window exceeds 256 positions"):
        train_demo_lm(
            tmp_path / "x",
            steps=1,
            long_steps=1,
            vocab_size=300,
            model_overrides={**TINY, "max_position_embeddings": 256},
        )


HYBRID_TINY = {"hidden_size": 32, "layers": "mamba2,attention", "num_heads": 2, "num_kv_heads": 1, "mamba2_heads": 2}


def test_hybrid_demo_trains_on_the_same_data_and_exports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from export.checkpoint import load_checkpoint
    from export.models.hybrid import HybridLM

    kw = dict(steps=3, vocab_size=300, batch_size=2, seq_len=32, eval_every=2, model_overrides=HYBRID_TINY)
    hybrid = train_demo_lm(tmp_path / "h", seed=7, arch="hybrid", **kw)
    again = train_demo_lm(tmp_path / "h2", seed=7, arch="hybrid", **kw)
    assert hybrid["arch"] == "hybrid" and hybrid["final_val_loss"] == again["final_val_loss"]
    assert abs(hybrid["final_val_perplexity"] - math.exp(hybrid["final_val_loss"])) < 1e-9
    ckpt = load_checkpoint(tmp_path / "h")
    assert isinstance(ckpt.model, HybridLM) and ckpt.config.layer_kinds == ["mamba2", "attention"]
    # The same tokenizer as the Llama demo under the same seed and vocabulary.
    llama = train_demo_lm(
        tmp_path / "l", seed=7, steps=1, vocab_size=300, batch_size=2, seq_len=32, model_overrides=TINY
    )
    assert (tmp_path / "h/tokenizer.json").read_bytes() == (tmp_path / "l/tokenizer.json").read_bytes()
    assert llama["arch"] == "llama"
