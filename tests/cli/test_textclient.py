"""The in-process text client cleans up after itself: its event loop is closed with it, so the
CLI's exit never runs the loop's finalizer (which, at interpreter exit, can print a traceback
after the one-line error a refused request gets)."""

from __future__ import annotations

from pathlib import Path

from cli.textclient import LocalText, Sampling


def test_closing_the_local_client_closes_its_event_loop(tiny_lm_vision_repo: Path) -> None:
    client = LocalText(tiny_lm_vision_repo, "tiny-lm")
    stream = client.generate("hi", Sampling(max_new_tokens=2, temperature=0.0))
    text = "".join(stream)
    assert stream.outcome.completion_tokens == 2 and isinstance(text, str)
    client.close()
    assert not client.thread.is_alive() and client.loop.is_closed()
