"""TritonClassifierRunner without a server: chunking at Triton's max_batch_size, errors marked."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.backends.triton_client import ModelState, TritonError
from service.backends.triton_vision import TritonClassifierRunner


class FakeConnection:
    def __init__(self, max_batch_size: int, fail: TritonError | None = None) -> None:
        self.states = {"vit": ModelState(ready=True, reason="ready", config={"max_batch_size": max_batch_size})}
        self.calls: list[int] = []
        self.fail = fail
        self.marked: list[str] = []

    def state(self, model: str) -> ModelState:
        return self.states[model]

    def check(self, model: str) -> None:
        if not self.states[model].ready:
            raise TritonError("down", code="triton_unavailable")

    async def infer(self, model: str, inputs: dict, outputs: list[str]) -> dict:
        x = inputs["pixel_values"]
        self.calls.append(len(x))
        if self.fail:
            raise self.fail
        return {"logits": x.reshape(len(x), -1)[:, :2] * 2}

    def mark_unavailable(self, model: str, error: Exception) -> None:
        self.marked.append(getattr(error, "code", ""))


def test_one_infer_per_request_chunked_at_max_batch_size() -> None:
    x = np.random.default_rng(0).standard_normal((7, 3, 2, 2)).astype(np.float32)
    conn = FakeConnection(max_batch_size=64)
    runner = TritonClassifierRunner(conn, "vit", "pixel_values", "logits", 8)  # type: ignore[arg-type]
    np.testing.assert_array_equal(asyncio.run(runner.run(x)), x.reshape(7, -1)[:, :2] * 2)
    assert conn.calls == [7]
    conn = FakeConnection(max_batch_size=3)
    runner = TritonClassifierRunner(conn, "vit", "pixel_values", "logits", 8)  # type: ignore[arg-type]
    np.testing.assert_array_equal(asyncio.run(runner.run(x)), x.reshape(7, -1)[:, :2] * 2)
    assert conn.calls == [3, 3, 1]


def test_failures_are_503s_and_mark_the_model_down() -> None:
    conn = FakeConnection(64, fail=TritonError("gone", code="triton_unavailable"))
    runner = TritonClassifierRunner(conn, "vit", "pixel_values", "logits", 8)  # type: ignore[arg-type]
    with pytest.raises(TritonError) as info:
        asyncio.run(runner.run(np.zeros((2, 3, 2, 2), np.float32)))
    assert info.value.code == "triton_unavailable" and conn.marked == ["triton_unavailable"]
    conn.states["vit"].ready = False
    with pytest.raises(TritonError):
        asyncio.run(runner.run(np.zeros((2, 3, 2, 2), np.float32)))
    assert not runner.ready and runner.unavailable_reason is not None
