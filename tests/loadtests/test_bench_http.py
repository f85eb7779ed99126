"""bench_http starts timing the profiled run only once py-spy says it samples (a fixed sleep raced)."""

from __future__ import annotations

import subprocess
import time

from loadtests.bench_http import _await_sampling


def _stand_in(script: str) -> subprocess.Popen:
    """A process that speaks on stdout like `py-spy record` does (py-spy itself needs a target)."""
    return subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_waits_for_the_sampling_line_however_late_it_comes() -> None:
    spy = _stand_in("echo 'py-spy> waiting'; sleep 1.5; echo 'py-spy> Sampling process 997 times'; exec sleep 30")
    started = time.monotonic()
    try:
        assert _await_sampling(spy, timeout=20)
        assert time.monotonic() - started >= 1.4  # not before the line came
    finally:
        spy.kill()
        spy.communicate()


def test_a_profiler_that_exits_or_stays_silent_is_reported_not_waited_on() -> None:
    exited = _stand_in("echo 'Error: failed to attach' >&2; exit 1")
    assert not _await_sampling(exited, timeout=20)
    exited.communicate()
    silent = _stand_in("exec sleep 30")
    started = time.monotonic()
    try:
        assert not _await_sampling(silent, timeout=0.5)
        assert time.monotonic() - started < 5
    finally:
        silent.kill()
        silent.communicate()


def test_the_sampling_line_is_seen_when_it_shares_one_write_with_another() -> None:
    spy = _stand_in("printf 'py-spy> one\\npy-spy> Sampling process 997 times\\n'; exec sleep 30")
    try:
        assert _await_sampling(spy, timeout=3)
    finally:
        spy.kill()
        spy.communicate()
