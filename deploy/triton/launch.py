"""Start and stop the real tritonserver installed by deploy/triton/install.sh (CPU, Triton 2.51).

As a library (the integration tests):

    server = TritonServer(repository, models=["demo-lm-triton"]).start()   # waits for readiness
    server.grpc_url                                                          # "127.0.0.1:PORT"
    server.kill(); server.start()                                            # same ports again
    server.stop()

As a command (local runs): `python deploy/triton/launch.py --repository model_repository
--model demo-lm-triton [--grpc-port 8001]` runs in the foreground until Ctrl-C.

The python backend's stub runs model.py with the first `python3` on PATH, so `.venv-triton/bin`
goes first on PATH (PYTHONPATH is ignored by the stub), and LD_LIBRARY_PATH points at that
Python's libpython so the stub does not pick up a different patch release.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRITON_HOME = ROOT / ".triton" / "pytriton" / "tritonserver"
TRITON_ENV = ROOT / ".venv-triton"
INSTALL_FAILED = ROOT / ".triton-install-failed"


class TritonNotInstalled(RuntimeError):
    pass


def installed_reason() -> str | None:
    """None when tritonserver and its stub environment are installed, else why not."""
    if INSTALL_FAILED.is_file():
        return f"deploy/triton/install.sh failed: {INSTALL_FAILED.read_text().strip()[-800:]}"
    for path in (TRITON_HOME / "bin/tritonserver", TRITON_HOME / "backends/python/triton_python_backend_stub"):
        if not path.is_file():
            return f"{path} is missing: run `make triton-tools` (deploy/triton/install.sh)"
    if not (TRITON_ENV / "bin/python").is_file():
        return f"{TRITON_ENV} is missing: run `make triton-tools` (deploy/triton/install.sh)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    def __init__(
        self,
        repository: Path,
        models: list[str] | None = None,
        backend_directory: Path | None = None,
        log_file: Path | None = None,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
    ) -> None:
        reason = installed_reason()
        if reason:
            raise TritonNotInstalled(reason)
        self.repository = Path(repository)
        self.models = models  # None: load everything (model-control-mode none)
        self.backend_directory = backend_directory or TRITON_HOME / "backends"
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        cmd = [
            str(TRITON_HOME / "bin/tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.backend_directory}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=5",
        ]
        if self.models is not None:
            cmd.append("--model-control-mode=explicit")
            cmd += [f"--load-model={m}" for m in self.models]
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PATH=f"{TRITON_ENV / 'bin'}:{os.environ.get('PATH', '')}")
        env.pop("PYTHONPATH", None)
        libdir = subprocess.check_output(
            [str(TRITON_ENV / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            text=True,
        ).strip()
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))
        return env

    def start(self, timeout: float = 90.0) -> TritonServer:
        log = open(self.log_file, "a") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        # Its own process group: the python-backend stubs it forks are in it, so `kill` takes them
        # down with the server (as a crashed container would) instead of orphaning them.
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        paths = [f"/v2/models/{m}/ready" for m in self.models] if self.models else ["/v2/health/ready"]
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}; log: {self.log_file}")
            if all(self._ok(p) for p in paths):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tritonserver not ready in {timeout} s; log: {self.log_file}")

    def _ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, the way a crashed or evicted server disappears (its backend stubs with it)."""
        if self.proc and self.proc.poll() is None:
            self._kill_group()
            self.proc.wait(15)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc:
            self._kill_group()  # any stub still running after the server left

    def _kill_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run tritonserver from .triton/ on a Kiln model repository.")
    parser.add_argument("--repository", default=str(ROOT / "model_repository"))
    parser.add_argument("--model", action="append", help="load only these models (repeatable); default: all")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    args = parser.parse_args()
    server = TritonServer(
        Path(args.repository).resolve(),
        args.model,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
    )
    server.proc = subprocess.Popen(server.command(), env=server.env())
    print(f"tritonserver pid {server.proc.pid}: grpc {server.grpc_url}, http {server.http_url}", flush=True)
    try:
        server.proc.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
