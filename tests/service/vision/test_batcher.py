"""The dynamic batcher: merging concurrent jobs, max batch size, routing of results, errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from service.vision.batcher import BatchObserver, DynamicBatcher


class Recorder(BatchObserver):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def batch(self, views: int, seconds: float) -> None:
        self.sizes.append(views)


def slow_double(x: np.ndarray) -> np.ndarray:
    time.sleep(0.01)
    return x * 2


def test_concurrent_jobs_share_runs_and_get_their_own_rows() -> None:
    rec = Recorder()
    b = DynamicBatcher(slow_double, max_batch=64, max_delay_s=0.02, observer=rec)
    jobs = [np.full((5, 2), i, np.float32) for i in range(12)]
    futures = [b.submit(j) for j in jobs]
    outs = [f.result(5) for f in futures]
    b.close()
    for i, out in enumerate(outs):
        assert out.shape == (5, 2) and np.all(out == 2 * i)
    assert sum(rec.sizes) == 60
    assert len(rec.sizes) < 12 and max(rec.sizes) > 5  # merged
    assert max(rec.sizes) <= 64


def test_max_batch_is_respected_and_large_jobs_are_split_in_order() -> None:
    rec = Recorder()
    b = DynamicBatcher(slow_double, max_batch=8, max_delay_s=0.01, observer=rec)
    big = np.arange(30, dtype=np.float32).reshape(30, 1)
    small = [b.submit(np.ones((3, 1), np.float32)) for _ in range(4)]
    out = b.submit(big).result(5)
    assert np.array_equal(out, big * 2)
    assert all(np.all(f.result(5) == 2) for f in small)
    b.close()
    assert max(rec.sizes) <= 8 and sum(rec.sizes) == 42


def test_threads_submitting_at_once() -> None:
    b = DynamicBatcher(slow_double, max_batch=32, max_delay_s=0.005)
    results: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        results[i] = b.submit(np.full((4, 3), i, np.float32)).result(5)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert all(np.all(results[i] == 2 * i) for i in range(16))
    assert b.runs < 16


def test_a_failing_run_fails_its_jobs_and_the_batcher_keeps_going() -> None:
    calls = {"n": 0}

    def flaky(x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return x

    b = DynamicBatcher(flaky, max_batch=4, max_delay_s=0.0)
    with pytest.raises(RuntimeError, match="boom"):
        b.submit(np.ones((2, 1))).result(5)
    assert np.array_equal(b.submit(np.ones((2, 1))).result(5), np.ones((2, 1)))
    b.close()
