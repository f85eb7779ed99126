"""LoopOutbox: engine-thread events reach the event loop complete, in order, with one wake-up a burst."""

from __future__ import annotations

import asyncio
import threading

from service.engine.request import TokenEvent
from service.engine.textgen import LoopOutbox


def test_a_burst_is_delivered_in_order_with_one_wake_up() -> None:
    async def main() -> tuple[list[list[int]], int]:
        outbox = LoopOutbox(asyncio.get_running_loop())
        drains = 0
        drain = outbox._drain

        def counted() -> None:
            nonlocal drains
            drains += 1
            drain()

        outbox._drain = counted  # type: ignore[method-assign]
        queues: list[asyncio.Queue] = [asyncio.Queue() for _ in range(3)]
        for step in range(4):  # a step's events for three sequences, before the loop runs again
            for q in queues:
                outbox.post(q, TokenEvent(str(step), step))
        await asyncio.sleep(0)
        got = [[q.get_nowait().token_id for _ in range(q.qsize())] for q in queues]
        return got, drains

    got, drains = asyncio.run(main())
    assert got == [[0, 1, 2, 3]] * 3
    assert drains == 1


def test_events_from_another_thread_all_arrive_in_order() -> None:
    async def main() -> list[int]:
        outbox = LoopOutbox(asyncio.get_running_loop())
        queue: asyncio.Queue = asyncio.Queue()
        worker = threading.Thread(target=lambda: [outbox.post(queue, TokenEvent("", i)) for i in range(2000)])
        worker.start()
        received = [(await asyncio.wait_for(queue.get(), 10)).token_id for _ in range(2000)]
        worker.join()
        return received

    assert asyncio.run(main()) == list(range(2000))
