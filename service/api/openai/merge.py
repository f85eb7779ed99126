"""Several choices' event streams as one, in arrival order, a burst at a time.

An OpenAI request with `n` choices (or several prompts) streams them interleaved in one SSE
response. With one choice the stream's own bursts pass straight through; with several, one task
per choice forwards its bursts and the reader takes everything that has arrived in one go, so a
write carries all pending chunks instead of one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from service.engine.request import Event
from service.engine.textgen import TextStream

Tagged = tuple[int, Event]  # (choice index, event)


async def merged_bursts(streams: list[TextStream]) -> AsyncIterator[list[Tagged]]:
    if len(streams) == 1:
        async for one in streams[0].bursts():
            yield [(0, event) for event in one]
        return
    queue: asyncio.Queue[list[Tagged]] = asyncio.Queue()

    async def forward(index: int, stream: TextStream) -> None:
        async for burst in stream.bursts():
            queue.put_nowait([(index, event) for event in burst])

    tasks = [asyncio.create_task(forward(i, s)) for i, s in enumerate(streams)]
    try:
        while True:
            tagged = await queue.get()
            while not queue.empty():
                tagged.extend(queue.get_nowait())
            yield tagged
    finally:
        for task in tasks:
            task.cancel()
