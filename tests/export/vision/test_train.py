"""Demo classifier training: deterministic under a seed, and it learns."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from export.vision.train import _target, _visible, train_demo_vision

TINY = dict(image_size=16, patch_size=8, dim=32, depth=1, heads=2, stem="conv")


def test_same_seed_same_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    kw = dict(steps=4, batch_size=16, scenes_per_source=1, source_limit=24, eval_every=100, model_overrides=TINY)
    a = train_demo_vision(tmp_path / "a", seed=5, **kw)
    train_demo_vision(tmp_path / "b", seed=5, **kw)
    train_demo_vision(tmp_path / "c", seed=6, **kw)
    wa, wb, wc = (load_file(str(tmp_path / d / "model.safetensors")) for d in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert a["steps"] == 4 and (tmp_path / "a" / "train_log.json").exists()


def test_soft_targets_follow_visibility() -> None:
    digit = (10, 10, 20, 20)
    assert _visible((0, 0, 30, 30), digit) == 1.0
    assert _visible((15, 0, 40, 40), digit) == 0.5
    assert _visible((50, 50, 60, 60), digit) == 0.0
    full, none = _target(3, 1.0), _target(3, 0.0)
    assert full[3] == 1.0 and abs(full.sum() - 1) < 1e-6
    assert abs(none.max() - 0.1) < 1e-6  # an empty tile teaches "no idea"
