"""In-process dynamic batching: views from concurrent requests share ONNX Runtime runs.

Requests submit a stack of views [V, ...] and get a future. One worker thread takes the
oldest job, then keeps taking queued jobs until `max_batch` views are gathered or
`max_delay_s` has passed since that first job arrived, runs them as one batch, and hands
each job its rows. A job larger than `max_batch` is cut into chunks that run in order. While
a batch runs, new work queues up, so under load batches fill without waiting at all.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np


class BatchObserver:
    def batch(self, views: int, seconds: float) -> None: ...

    def queued(self, seconds: float) -> None: ...


@dataclass
class _Job:
    x: np.ndarray
    future: Future
    submitted: float
    outputs: list[np.ndarray | None] = field(default_factory=list)
    remaining: int = 0


@dataclass
class _Chunk:
    job: _Job
    part: int
    x: np.ndarray


class DynamicBatcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 64,
        max_delay_s: float = 0.002,
        observer: BatchObserver | None = None,
        name: str = "model",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.observer = observer or BatchObserver()
        self._queue: queue.Queue[_Chunk | None] = queue.Queue()
        self._carry: _Chunk | None = None
        self.runs = 0
        self._thread = threading.Thread(target=self._loop, name=f"kiln-batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, x: np.ndarray) -> Future:
        """Queue views [V, ...]; the future resolves to the outputs [V, ...] in the same order."""
        fut: Future = Future()
        if len(x) == 0:
            fut.set_exception(ValueError("no views to run"))
            return fut
        job = _Job(x, fut, time.perf_counter())
        parts = [x[i : i + self.max_batch] for i in range(0, len(x), self.max_batch)]
        job.outputs = [None] * len(parts)
        job.remaining = len(parts)
        for i, part in enumerate(parts):
            self._queue.put(_Chunk(job, i, part))
        return fut

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _next(self, timeout: float | None) -> _Chunk | None:
        if self._carry is not None:
            chunk, self._carry = self._carry, None
            return chunk
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            chunks, size = [first], len(first.x)
            deadline = time.perf_counter() + self.max_delay_s
            stop = False
            while size < self.max_batch:
                try:
                    chunk = self._next(deadline - time.perf_counter())
                except queue.Empty:
                    break
                if chunk is None:
                    stop = True
                    break
                if size + len(chunk.x) > self.max_batch:
                    self._carry = chunk
                    break
                chunks.append(chunk)
                size += len(chunk.x)
            self._run_batch(chunks, size)
            if stop:
                return

    def _run_batch(self, chunks: list[_Chunk], size: int) -> None:
        started = time.perf_counter()
        for c in chunks:
            if c.part == 0:
                self.observer.queued(started - c.job.submitted)
        try:
            out = self.run(np.concatenate([c.x for c in chunks]) if len(chunks) > 1 else chunks[0].x)
        except Exception as exc:  # every job in the batch fails with the runner's error
            for c in chunks:
                if not c.job.future.done():
                    c.job.future.set_exception(exc)
            return
        self.runs += 1
        self.observer.batch(size, time.perf_counter() - started)
        offset = 0
        for c in chunks:
            n = len(c.x)
            job = c.job
            job.outputs[c.part] = out[offset : offset + n]
            offset += n
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                parts = [o for o in job.outputs if o is not None]  # every part is set by now
                job.future.set_result(np.concatenate(parts) if len(parts) > 1 else parts[0])
