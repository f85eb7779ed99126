"""What both Triton integration modules need: the launcher, a real tritonserver with the
test-only ONNX Runtime stand-in, and gateways (Triton-backed and in-process) on one repository."""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kiln_triton_launch", ROOT / "deploy/triton/launch.py")
launch = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(launch)  # type: ignore[union-attr]


def skip_unless_installed() -> None:
    reason = launch.installed_reason()
    if reason:
        pytest.skip(f"Triton is not installed: {reason}")


@contextmanager
def running_triton(repo: Path, models: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """tritonserver on `repo`: the real python backend, plus the TEST-ONLY python stand-in for
    Triton's ONNX Runtime backend (the CPU build has none) at `<backends>/onnxruntime/model.py`."""
    backends = tmp_path_factory.mktemp("backends")
    (backends / "python").symlink_to(launch.TRITON_HOME / "backends" / "python")
    (backends / "onnxruntime").mkdir()
    shutil.copyfile(Path(__file__).with_name("onnxruntime_standin.py"), backends / "onnxruntime" / "model.py")
    log = tmp_path_factory.mktemp("log") / "tritonserver.log"
    server = launch.TritonServer(repo, models=models, backend_directory=backends, log_file=log)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def gateway_client(repo: Path, triton_url: str | None = None) -> Iterator[TestClient]:
    """The real app on `repo`: served through Triton at `triton_url`, or in-process when None."""
    extra = {}
    if triton_url is not None:
        extra = dict(
            backend="triton", triton_url=triton_url, triton_retries=2, triton_backoff_s=0.1, triton_timeout_s=10
        )
    with TestClient(create_app(Settings(model_repository=repo, grpc_port=0, **extra))) as client:
        wait_ready(client)
        yield client


def wait_status(client: TestClient, status: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"/readyz never became {status}: {client.get('/readyz').json()}")
