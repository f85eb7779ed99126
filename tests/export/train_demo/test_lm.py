import json

from export.train_demo.lm import train_demo_lm

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
