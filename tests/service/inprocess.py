"""The real app in-process (FastAPI TestClient) with its gRPC server on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from fastapi.testclient import TestClient

from service.app import create_app
from service.rpc import kiln_v1_pb2_grpc as pb_grpc
from service.settings import Settings
from tests.conftest import wait_ready
from tests.live_server import free_port


@contextmanager
def serving(repo: Path, **settings: object) -> Iterator[tuple[TestClient, pb_grpc.KilnStub]]:
    port = free_port()
    app = create_app(Settings(model_repository=repo, host="127.0.0.1", grpc_port=port, **settings))  # type: ignore[arg-type]
    with TestClient(app) as client:
        wait_ready(client)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=10)
        try:
            yield client, pb_grpc.KilnStub(channel)
        finally:
            channel.close()
