"""bench_http starts timing the profiled run only once py-spy says it samples (a fixed sleep raced)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from loadtests.bench_http import _await_sampling


@contextmanager
def _stand_in(script: str) -> Iterator[subprocess.Popen]:
    """A process that speaks on stdout like `py-spy record` does (py-spy itself needs a target),
    killed and reaped on the way out."""
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.communicate()


def test_waits_for_the_sampling_line_however_late_it_comes() -> None:
    script = "echo 'py-spy> waiting'; sleep 1.5; echo 'py-spy> Sampling process 997 times'; exec sleep 30"
    with _stand_in(script) as spy:
        started = time.monotonic()
        assert _await_sampling(spy, timeout=20)
        assert time.monotonic() - started >= 1.4  # not before the line came


def test_a_profiler_that_exits_or_stays_silent_is_reported_not_waited_on() -> None:
    with _stand_in("echo 'Error: failed to attach' >&2; exit 1") as exited:
        assert not _await_sampling(exited, timeout=20)
    with _stand_in("exec sleep 30") as silent:
        started = time.monotonic()
        assert not _await_sampling(silent, timeout=0.5)
        assert time.monotonic() - started < 5


def test_the_sampling_line_is_seen_when_it_shares_one_write_with_another() -> None:
    with _stand_in("printf 'py-spy> one\\npy-spy> Sampling process 997 times\\n'; exec sleep 30") as spy:
        assert _await_sampling(spy, timeout=3)
