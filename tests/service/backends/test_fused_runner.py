"""The fused runner's verify call (speculative decoding) against one-token extends: the cached
binding must score the tokens at the row's current position, whatever row and start."""

from __future__ import annotations

import numpy as np

from contracts.manifest import TextManifest
from service.backends.onnxruntime_lm import make_runner

PROMPT = [1, 17, 52, 9, 33, 8, 71, 5]
GUESS = [12, 40, 41, 7]


def one_by_one(runner, row: int, tokens: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.stack([runner.extend(row, [t]) for t in tokens])


def test_verify_scores_like_extends_at_any_row_and_start(tiny_lm_repo) -> None:  # type: ignore[no-untyped-def]
    manifest = TextManifest.read(next(tiny_lm_repo.glob("*/kiln.json")).parent)
    runner = make_runner(manifest, "fused", max_batch=2, max_seq_len=64, threads=1)
    for row in (0, 1):
        runner.prefill(row, PROMPT[: 4 + row])
    for row in (0, 1):
        for start_extra in (0, 3):  # the same (row, length) binding, reused at a later position
            if start_extra:
                runner.extend(row, GUESS[:start_extra])
            held = runner.length(row)
            expected = one_by_one(runner, row, GUESS)
            runner.truncate(row, held)
            got = runner.verify(row, GUESS)
            assert runner.length(row) == held + len(GUESS)
            np.testing.assert_allclose(got, expected, atol=1e-4)
            runner.truncate(row, held)
    assert len(runner._verify_bindings) == 2  # one per row for this length, reused


def test_parked_positions_come_back_bit_for_bit(tiny_lm_repo) -> None:  # type: ignore[no-untyped-def]
    manifest = TextManifest.read(next(tiny_lm_repo.glob("*/kiln.json")).parent)
    runner = make_runner(manifest, "fused", max_batch=2, max_seq_len=64, threads=1)
    assert runner.reserve_parking(runner.state.nbytes) == 2  # two slots' bytes: two host rows
    runner.prefill(0, PROMPT)
    expected = runner.extend(0, GUESS)  # the same calls without parking
    runner.release_row(0)
    runner.prefill(1, PROMPT)
    runner.park(1, 1, len(PROMPT))
    runner.release_row(1)
    runner.prefill(0, GUESS * 3)  # row 0 holds something else now
    runner.unpark(1, 0, len(PROMPT))
    assert runner.length(0) == len(PROMPT)
    np.testing.assert_array_equal(runner.extend(0, GUESS), expected)
