"""A real `kiln serve` subprocess for tests that need real sockets and signals."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`kiln serve` on free loopback ports, started and ready. Tests keep its output (shown if it
    dies at start-up); long runs (load tests, benchmarks) pass capture_output=False so an unread
    pipe can never fill up and stall the server."""

    def __init__(self, repo: Path, *, ready_timeout: float = 60.0, capture_output: bool = True, **env: str) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        full_env = {
            **os.environ,
            "KILN_MODEL_REPOSITORY": str(repo),
            "KILN_HOST": "127.0.0.1",
            "KILN_PORT": str(self.port),
            "KILN_GRPC_PORT": str(self.grpc_port),
            "KILN_LOG_LEVEL": "warning",
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve"],
            env=full_env,
            stdout=subprocess.PIPE if capture_output else None,
            stderr=subprocess.STDOUT if capture_output else None,
            text=True,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"server died: {self.proc.stdout.read() if self.proc.stdout else ''}")
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server not ready in {ready_timeout:.0f} s")

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def stop(self) -> None:
        """SIGTERM first: the server drains (idle: at once) and exits 0, so a coverage run records
        what it executed; SIGKILL only if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
