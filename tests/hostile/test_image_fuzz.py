"""Byte-level fuzzing of image decoding on /classify: mutated, truncated and random bytes never
crash the gateway or hang it, and always get a 4xx with a code (or a 200 for a still-valid image)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready


def _encode(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


SEEDS = [_encode(fmt) for fmt in ("PNG", "JPEG", "BMP", "GIF", "WEBP")]


@pytest.fixture(scope="module")
def client(tiny_vision_repo):  # type: ignore[no-untyped-def]
    s = Settings(model_repository=tiny_vision_repo, grpc_port=0, max_image_pixels=1_000_000, classify_max_delay_ms=1)
    with TestClient(create_app(s)) as c:
        wait_ready(c)
        yield c


@st.composite
def mutated_images(draw):  # type: ignore[no-untyped-def]
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):  # flip bytes, headers included
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))  # truncate
    return bytes(data[:cut] if cut is not None else data)


def _check(client: TestClient, payload: bytes) -> None:
    r = client.post("/classify", files=[("file", ("x.bin", payload, "application/octet-stream"))])
    assert r.status_code in (200, 400, 413, 415), (r.status_code, r.text[:300])
    if r.status_code != 200:
        assert r.json()["error"]["code"]


@given(payload=mutated_images())
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_mutated_and_truncated_images_get_a_4xx_or_decode(client: TestClient, payload: bytes) -> None:
    _check(client, payload)


@given(payload=st.binary(max_size=512))
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_random_bytes_get_a_4xx(client: TestClient, payload: bytes) -> None:
    _check(client, payload)
