"""A non-Llama family (Qwen2: q/k/v biases, tied embedding) through a REAL tritonserver.

`kiln export --target triton` on the transformers-built checkpoint writes the decoupled
python-backend model; here it runs the traced standard graph (`KILN_LM_VARIANT=fp32`, the
graph Triton's own ONNX Runtime and TensorRT backends take) inside Triton, and the gateway
(KILN_BACKEND=triton) must return exactly the tokens transformers' `generate()` picks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from export.pipeline import export_checkpoint
from export.triton_repo import lm_python_config, write_config
from service.app import create_app
from service.settings import Settings
from tests.conftest import TINY_TEXT, wait_ready
from tests.integration.triton_support import running_triton, skip_unless_installed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FAMILY = "qwen2"
TRITON_NAME = f"{FAMILY}-triton"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, family_zoo) -> Path:  # type: ignore[no-untyped-def]
    skip_unless_installed()
    repo = tmp_path_factory.mktemp("triton-family")
    export_checkpoint(family_zoo.checkpoint(FAMILY), repo, FAMILY, variants=False, val_texts=TINY_TEXT, target="triton")
    write_config(repo / TRITON_NAME, lm_python_config(TRITON_NAME, {"KILN_LM_VARIANT": "fp32"}))
    return repo


@pytest.fixture(scope="module")
def gateway(repo: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with running_triton(repo, [TRITON_NAME], tmp_path_factory) as triton:
        settings = Settings(model_repository=repo, grpc_port=0, backend="triton", triton_url=triton.grpc_url)
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            yield client


def test_greedy_tokens_through_triton_equal_transformers(gateway, family_zoo) -> None:  # type: ignore[no-untyped-def]
    reference = family_zoo.reference(FAMILY)
    for prompt in ("def fib(n):", "class Point:\n"):
        ids = gateway.post("/tokenize", json={"prompt": prompt}).json()["tokens"]
        body = {"prompt": prompt, "max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
        r = gateway.post("/generate", json=body)
        assert r.status_code == 200, r.text
        with torch.no_grad():
            out = reference.generate(
                torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0
            )
        expected = gateway.post("/detokenize", json={"tokens": out[0, len(ids) :].tolist()}).json()["prompt"]
        assert expected and r.json()["text"] == expected, prompt
