"""A live server over the shared tiny repository, for the CLI's `--url` paths."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live_server import Server


@pytest.fixture(scope="session")
def cli_server(tiny_lm_vision_repo: Path) -> Iterator[Server]:
    server = Server(tiny_lm_vision_repo)
    yield server
    server.stop()


def kiln(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        input=stdin,
        env={**os.environ, **env},
    )
