"""Demo scenes: splits by source digit, determinism, and what a scene contains."""

from __future__ import annotations

import numpy as np

from export.vision.data import DIGIT_PX, SCENE_SIZE, load_sources, make_scenes, split_sources


def test_splits_partition_the_sources_and_never_share_a_digit() -> None:
    n = len(load_sources()[0])
    splits = split_sources(n, seed=0)
    sets = {k: set(v.tolist()) for k, v in splits.items()}
    assert sum(len(s) for s in sets.values()) == n
    assert set().union(*sets.values()) == set(range(n))
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not sets[a] & sets[b], f"{a} and {b} share source digits"
    # Scenes carry their source index: scenes of different splits never share one either.
    test_sources = {s.source for s in make_scenes("test", 1, 0, limit=40)}
    assert test_sources <= sets["test"] and not test_sources & sets["train"]


def test_split_depends_on_the_seed_only() -> None:
    a, b, c = split_sources(1797, 0), split_sources(1797, 0), split_sources(1797, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_scenes_are_deterministic_and_hold_a_small_digit() -> None:
    s1 = make_scenes("calib", 2, seed=3, limit=5)
    s2 = make_scenes("calib", 2, seed=3, limit=5)
    assert len(s1) == 10
    for a, b in zip(s1, s2, strict=True):
        assert np.array_equal(a.pixels, b.pixels) and a.box == b.box and a.label == b.label
    for s in s1:
        assert s.pixels.shape == (SCENE_SIZE, SCENE_SIZE, 3) and s.pixels.dtype == np.uint8
        x0, y0, x1, y1 = s.box
        assert DIGIT_PX[0] <= x1 - x0 <= DIGIT_PX[1] and 0 <= x0 and x1 <= SCENE_SIZE and 0 <= y0 and y1 <= SCENE_SIZE
        # The digit's ink is brighter than the scene on average.
        assert s.pixels[y0:y1, x0:x1].max() > s.pixels.mean() + 40
    assert not np.array_equal(s1[0].pixels, s1[1].pixels)  # two placements of one source differ
