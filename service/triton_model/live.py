"""The python model's live requests, their response senders, and the cancellation watch.

A response sender must not be asked anything once its final response is sent: Triton then
frees the response factory behind it, and the python backend's `is_cancelled()` on a freed
factory crashes the whole server (SIGSEGV in TRITONBACKEND_ResponseFactoryIsCancelled, seen in
a fresh-clone test run, with the watch checking a snapshot taken before the request finished).
So a request leaves the registry before its final response goes out, and the watch asks
`is_cancelled()` only under the registry's lock, of requests still in it. Kept apart from
model.py, which only imports inside Triton's python backend, so it is tested directly.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class LiveRequests:
    def __init__(self) -> None:
        self._live: dict[int, tuple[Cancellable, Any]] = {}  # id(request) -> (request, response sender)
        self._lock = threading.Lock()

    def add(self, req: Cancellable, sender: Any) -> None:
        with self._lock:
            self._live[id(req)] = (req, sender)

    def remove(self, req: Cancellable) -> None:
        """Before the request's final response is sent: no check of its sender starts after this."""
        with self._lock:
            self._live.pop(id(req), None)

    def check_cancelled(self) -> None:
        """Cancel every live request whose client cancelled its stream (or whose sender fails)."""
        with self._lock:  # held throughout: a remove() waits for the check of its sender to end
            for req, sender in self._live.values():
                try:
                    cancelled = sender.is_cancelled()
                except Exception:
                    cancelled = True
                if cancelled:
                    req.cancel()

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)
