"""A Mamba / attention hybrid through a REAL tritonserver: `kiln export --target triton` writes the
decoupled python-backend model, whose vendored engine runs the hybrid runner (recurrent state per
slot) inside Triton; the gateway (KILN_BACKEND=triton) returns exactly the in-process tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.pipeline import export_checkpoint
from tests.conftest import TINY_TEXT
from tests.integration.triton_support import running_triton, skip_unless_installed
from tests.sse import generate_events as sse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

NAME = "hybrid"
TRITON_NAME = "hybrid-triton"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, hybrid_checkpoint: Path) -> Path:
    skip_unless_installed()
    repo = tmp_path_factory.mktemp("triton-hybrid")
    export_checkpoint(hybrid_checkpoint, repo, NAME, val_texts=TINY_TEXT, target="triton")
    return repo


@pytest.fixture(scope="module")
def triton(repo: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with running_triton(repo, [TRITON_NAME], tmp_path_factory) as server:
        yield server


def test_the_triton_entry_carries_both_hybrid_graphs(repo: Path) -> None:
    lm = json.loads((repo / TRITON_NAME / "1/lm/kiln.json").read_text())
    assert lm["graphs"] == {"fp32": "hybrid"} and lm["decode_files"] == {"fp32": "model.decode.onnx"}
    assert (repo / TRITON_NAME / "1/lm/model.decode.onnx").is_file()
    assert (repo / TRITON_NAME / "1/kiln_vendor/service/backends/ort_hybrid.py").is_file()
    assert json.loads((repo / NAME / "kiln.json").read_text())["triton_model"] == TRITON_NAME


def test_greedy_tokens_through_triton_equal_in_process(gateway, inprocess) -> None:  # type: ignore[no-untyped-def]
    for prompt in ("def fib(n):", "class Point:\n", "import os\n"):
        body = {"prompt": prompt, "max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
        got, want = gateway.post("/generate", json=body), inprocess.post("/generate", json=body)
        assert got.status_code == 200, got.text
        assert (got.json()["text"], got.json()["usage"]) == (want.json()["text"], want.json()["usage"])
        g_chunks, _ = sse(gateway, body)
        w_chunks, _ = sse(inprocess, body)
        assert [c["token"] for c in g_chunks] == [c["token"] for c in w_chunks]
