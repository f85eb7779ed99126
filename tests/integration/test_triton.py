"""The gateway with KILN_BACKEND=triton against a REAL tritonserver (2.51, CPU, from nvidia-pytriton).

Triton runs on the repository written by `kiln export --target triton`: the decoupled
python-backend model `tiny-lm-triton` runs Kiln's own engine on ONNX Runtime inside Triton.
That model needs no stand-in. The plain `tiny-lm` entry (platform "onnxruntime_onnx") loads
only through the TEST-ONLY python stand-in for Triton's ONNX Runtime backend
(tests/integration/onnxruntime_standin.py), because the CPU build has no onnxruntime backend.

Installed by `make triton-tools` (deploy/triton/install.sh); skipped, with the reason, only
when that installation failed.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from contracts.manifest import TextManifest, past_name
from export.triton_repo import lm_python_config, write_config
from tests.conftest import build_tiny_lm_repo
from tests.integration.triton_support import running_triton, skip_unless_installed, wait_status
from tests.sse import generate_events as sse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

LM = "tiny-lm"
TRITON_LM = "tiny-lm-triton"
STEP_DELAY_MS = 5  # engine-step delay inside Triton, so the kill test lands mid-generation
PROMPTS = ["def fib(n):", "class Point:\n", "hello wörld 🙂", "import os\n"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    skip_unless_installed()
    repo = build_tiny_lm_repo(tmp_path_factory.mktemp("triton"), name=LM, target="triton")
    write_config(repo / TRITON_LM, lm_python_config(TRITON_LM, {"KILN_FAULT_STEP_DELAY_MS": str(STEP_DELAY_MS)}))
    return repo


@pytest.fixture(scope="module")
def triton(repo: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with running_triton(repo, [TRITON_LM, LM], tmp_path_factory) as server:
        yield server


def test_every_config_pbtxt_parses_with_tritons_schema(repo: Path) -> None:
    from tritonclient.grpc import model_config_pb2

    configs = {p.parent.name: p for p in repo.glob("*/config.pbtxt")}
    assert set(configs) == {LM, TRITON_LM}
    parsed = {n: text_format.Parse(p.read_text(), model_config_pb2.ModelConfig()) for n, p in configs.items()}
    lm = parsed[TRITON_LM]
    assert lm.backend == "python" and lm.model_transaction_policy.decoupled
    assert {i.name for i in lm.input} >= {"INPUT_IDS", "MAX_NEW_TOKENS", "STOP", "SEED"}
    assert {o.name for o in lm.output} >= {"TOKEN_IDS", "FINISH_REASON", "COMPLETION_TOKENS"}
    assert lm.parameters["KILN_MAX_BATCH"].string_value == "8"
    assert parsed[LM].platform == "onnxruntime_onnx"
    # The model directory is self-contained: Kiln's engine is copied next to model.py.
    assert (repo / TRITON_LM / "1/kiln_vendor/service/engine/engine.py").is_file()
    assert json.loads((repo / LM / "kiln.json").read_text())["triton_model"] == TRITON_LM


def test_greedy_generate_returns_exactly_the_in_process_tokens(gateway, inprocess) -> None:  # type: ignore[no-untyped-def]
    for prompt in PROMPTS:
        body = {"prompt": prompt, "max_new_tokens": 24, "temperature": 0}
        got, want = gateway.post("/generate", json=body), inprocess.post("/generate", json=body)
        assert got.status_code == 200, got.text
        g, w = got.json(), want.json()
        assert (g["text"], g["finish_reason"], g["usage"]) == (w["text"], w["finish_reason"], w["usage"])
        # Token ids too, from the streams.
        g_chunks, _ = sse(gateway, body)
        w_chunks, _ = sse(inprocess, body)
        assert [c["token"] for c in g_chunks] == [c["token"] for c in w_chunks]


def test_sampling_with_a_seed_and_stop_strings_match_in_process(gateway, inprocess) -> None:  # type: ignore[no-untyped-def]
    body = {"prompt": "def fib(n):", "max_new_tokens": 30, "temperature": 0.9, "top_k": 40, "seed": 7}
    assert gateway.post("/generate", json=body).json()["text"] == inprocess.post("/generate", json=body).json()["text"]
    text = inprocess.post("/generate", json={"prompt": "import os\n", "max_new_tokens": 30}).json()["text"]
    stop = text[5:8] if len(text) >= 8 else text[-2:]
    body = {"prompt": "import os\n", "max_new_tokens": 30, "stop": [stop]}
    got, want = gateway.post("/generate", json=body).json(), inprocess.post("/generate", json=body).json()
    assert (got["text"], got["finish_reason"]) == (want["text"], want["finish_reason"])
    assert got["finish_reason"] == "stop"


def test_streaming_sends_tokens_as_they_come(gateway) -> None:  # type: ignore[no-untyped-def]
    chunks, final = sse(gateway, {"prompt": "def fib(n):", "max_new_tokens": 20, "ignore_eos": True})
    assert final["finish_reason"] == "length" and final["usage"]["completion_tokens"] == 20
    assert len(chunks) >= 10 and all("token" in c for c in chunks)
    assert final["timings"]["ttft_ms"] < final["timings"]["total_ms"]


def test_openai_route_and_logprobs_reuse_the_same_model(gateway, inprocess) -> None:  # type: ignore[no-untyped-def]
    body = {"model": LM, "prompt": "def fib(n):", "max_tokens": 8, "temperature": 0, "logprobs": 2}
    got, want = gateway.post("/v1/completions", json=body), inprocess.post("/v1/completions", json=body)
    assert got.status_code == 200, got.text
    g, w = got.json()["choices"][0], want.json()["choices"][0]
    assert g["text"] == w["text"]
    np.testing.assert_allclose(g["logprobs"]["token_logprobs"], w["logprobs"]["token_logprobs"], atol=1e-5)


def test_concurrent_requests_are_batched_and_still_exact(gateway, inprocess) -> None:  # type: ignore[no-untyped-def]
    bodies = [{"prompt": p, "max_new_tokens": 16 + 4 * i, "temperature": 0} for i, p in enumerate(PROMPTS)]
    results: dict[int, dict] = {}

    def run(i: int) -> None:
        results[i] = gateway.post("/generate", json=bodies[i]).json()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, body in enumerate(bodies):
        assert results[i].get("text") == inprocess.post("/generate", json=body).json()["text"], results[i]


def test_plain_onnx_entry_runs_through_the_test_only_standin(repo: Path, triton, inprocess) -> None:  # type: ignore[no-untyped-def]
    """The unchanged onnxruntime_onnx config loads (via the stand-in) and its logits match ORT."""
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    manifest = TextManifest.read(repo / LM)
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(3, manifest.vocab_size, (1, 5)).astype(np.int64),
        "position_ids": np.arange(1, 6, dtype=np.int64)[None],
        "attention_mask": np.ones((1, 6), np.int64),
    }
    for layer in manifest.state:
        for tensor in layer.tensors:  # one position of past per state tensor
            shape = (1, *layer.slot_shape(tensor, 1))
            feeds[past_name(tensor)] = rng.standard_normal(shape).astype(np.float32)
    inputs = []
    for name, array in feeds.items():
        t = grpcclient.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
        t.set_data_from_numpy(array)
        inputs.append(t)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        logits = client.infer(LM, inputs, outputs=[grpcclient.InferRequestedOutput("logits")]).as_numpy("logits")
    finally:
        client.close()
    want = ort.InferenceSession(str(repo / LM / "1/model.onnx")).run(["logits"], feeds)[0]
    np.testing.assert_allclose(logits, want, atol=1e-5)


def test_readiness_follows_the_model_on_triton(gateway, triton) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        client.unload_model(TRITON_LM)
        wait_status(gateway, 503)
        body = gateway.get("/readyz").json()
        assert body["models"][LM] == "unavailable" and TRITON_LM in body["reason"]
        r = gateway.post("/generate", json={"prompt": "x", "max_new_tokens": 4})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        client.load_model(TRITON_LM)
        wait_status(gateway, 200)
        assert gateway.post("/generate", json={"prompt": "x", "max_new_tokens": 4}).status_code == 200
    finally:
        client.close()


def test_killing_triton_gives_503s_with_a_code_and_recovers(gateway, inprocess, triton) -> None:  # type: ignore[no-untyped-def]
    body = {"prompt": "def fib(n):", "max_new_tokens": 200, "ignore_eos": True}
    outcome: dict = {}

    def in_flight() -> None:
        outcome["response"] = gateway.post("/generate", json=body)

    worker = threading.Thread(target=in_flight)
    events = []
    with gateway.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                break  # the first token is out: generation is under way inside Triton
        worker.start()
        time.sleep(0.3)
        triton.kill()
        events = [line for line in lines if line.startswith(("data:", "event:"))]
    worker.join(30)
    assert not worker.is_alive(), "the in-flight request hung"
    # The stream ends with Kiln's late-error event naming the failure; the unary request is a 503.
    assert events[-3:-1] and events[-3] == "event: error" and events[-1] == "data: [DONE]", events[-4:]
    assert json.loads(events[-2][5:])["error"]["code"] == "triton_unavailable"
    resp = outcome["response"]
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "triton_unavailable", resp.text

    # While Triton is down: fast 503s with a code and Retry-After, and /readyz says so.
    started = time.monotonic()
    r = gateway.post("/generate", json={"prompt": "x", "max_new_tokens": 4})
    assert r.status_code == 503 and r.json()["error"]["code"] in ("triton_unavailable", "model_unavailable")
    assert "retry-after" in r.headers and time.monotonic() - started < 5
    wait_status(gateway, 503)

    # Triton comes back on the same ports: the gateway recovers by itself.
    triton.start()
    wait_status(gateway, 200, timeout=30)
    small = {"prompt": "def fib(n):", "max_new_tokens": 12, "temperature": 0}
    got = gateway.post("/generate", json=small)
    assert got.status_code == 200, got.text
    assert got.json()["text"] == inprocess.post("/generate", json=small).json()["text"]
