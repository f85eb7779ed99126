"""Fixtures both Triton modules share. Each module defines its own `repo` (what it exports) and
`triton` (a real tritonserver on that repository); these gateways are built on top of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.triton_support import gateway_client


@pytest.fixture(scope="module")
def gateway(repo: Path, triton):  # type: ignore[no-untyped-def]
    """The gateway with KILN_BACKEND=triton, pointed at the module's tritonserver."""
    with gateway_client(repo, triton.grpc_url) as client:
        yield client


@pytest.fixture(scope="module")
def inprocess(repo: Path):  # type: ignore[no-untyped-def]
    """The same repository served in-process: the reference the Triton path must match."""
    with gateway_client(repo) as client:
        yield client
