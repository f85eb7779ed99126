"""No sender is asked `is_cancelled()` after its final response: Triton frees the response factory
behind a finished sender, and asking then crashed tritonserver (SIGSEGV in
TRITONBACKEND_ResponseFactoryIsCancelled). Fake senders stand in for the python backend's (it only
runs inside tritonserver; tests/integration runs the real one): each records whether it was
asked after its final response, and asking takes a while, as the backend's IPC round trip does."""

from __future__ import annotations

import threading
import time

from service.triton_model.live import LiveRequests


class Sender:
    def __init__(self) -> None:
        self.final = False
        self.asked_after_final = False
        self.cancelled = False

    def is_cancelled(self) -> bool:
        if self.final:
            self.asked_after_final = True
        time.sleep(0.0002)  # the stub's round trip to the server process
        if self.final:
            self.asked_after_final = True
        return self.cancelled


class Request:
    def __init__(self) -> None:
        self.cancel_called = False

    def cancel(self) -> None:
        self.cancel_called = True


def test_a_finished_request_is_never_checked_while_the_watch_runs() -> None:
    live, stop = LiveRequests(), threading.Event()

    def watch() -> None:
        while not stop.is_set():
            live.check_cancelled()

    pairs = [(Request(), Sender()) for _ in range(150)]
    for req, sender in pairs[:16]:
        live.add(req, sender)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i, (req, sender) in enumerate(pairs):  # finish one, admit the next, as the engine does
            live.remove(req)
            sender.final = True  # the final response goes out after the request left the registry
            if i + 16 < len(pairs):
                live.add(*pairs[i + 16])
            time.sleep(0.0001)
    finally:
        stop.set()
        watcher.join()
    assert not any(sender.asked_after_final for _, sender in pairs)
    assert len(live) == 0


def test_a_cancelled_stream_or_a_failing_sender_cancels_its_request() -> None:
    live = LiveRequests()
    (a, sa), (b, sb), (c, sc) = (Request(), Sender()), (Request(), Sender()), (Request(), Sender())
    sb.cancelled = True
    sc.is_cancelled = lambda: 1 / 0  # type: ignore[method-assign]
    for req, sender in ((a, sa), (b, sb), (c, sc)):
        live.add(req, sender)
    live.check_cancelled()
    assert (a.cancel_called, b.cancel_called, c.cancel_called) == (False, True, True)
