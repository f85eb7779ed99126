"""Runs the app under uvicorn with a graceful drain on SIGTERM.

uvicorn alone stops listening the moment SIGTERM arrives. Kiln first turns /readyz to 503
and refuses new work (so a load balancer moves traffic away), lets in-flight generations
finish for up to KILN_DRAIN_S, and only then lets uvicorn shut down and exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn

from service.app import create_app
from service.logs import configure_logging
from service.settings import Settings, get_settings

log = logging.getLogger("kiln.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_s: float) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._draining:
            return super().handle_exit(sig, frame)
        self._draining = True
        loop = asyncio.get_running_loop()
        # Called from a signal handler: schedule through the thread-safe path to wake the loop.
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit(sig, frame)))

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        registry = self.config.app.state.registry  # type: ignore[union-attr]  # Kiln's FastAPI app
        registry.begin_drain()
        deadline = time.monotonic() + self.drain_s
        log.info("SIGTERM: draining %d request(s) for up to %.1fs", registry.busy, self.drain_s)
        while registry.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Give finished responses a moment to flush before uvicorn closes connections.
        await asyncio.sleep(0.2)
        if registry.busy:
            log.warning("drain period over with %d request(s) unfinished", registry.busy)
        # Not super().handle_exit(): uvicorn would re-raise the captured SIGTERM after shutdown and
        # the process would die by signal. A completed drain is a clean exit (status 0).
        self.should_exit = True


def serve(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # Kiln logs each request itself, with its request id
        log_config=None,  # keep Kiln's handlers (and their request-id filter)
        timeout_graceful_shutdown=max(1, int(settings.drain_s)),
    )
    DrainingServer(config, settings.drain_s).run()
