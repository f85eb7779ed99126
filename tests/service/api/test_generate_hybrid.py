"""A hybrid (Mamba + attention) entry served end to end: REST, SSE, the `openai` client and gRPC
all return what PyTorch generates, and the gateway reports the slot state it holds."""

from __future__ import annotations

import openai
import pytest
import torch

from export.checkpoint import load_checkpoint
from service.rpc import kiln_v1_pb2 as pb
from tests.service.inprocess import serving
from tests.sse import generate_events

PROMPT = "def fib(n):"
NEW = 12


@pytest.fixture(scope="module")
def hybrid(hybrid_entry):  # type: ignore[no-untyped-def]
    with serving(hybrid_entry.parent, max_batch=2, max_seq_len=96) as (client, stub):
        yield client, stub


@pytest.fixture(scope="module")
def expected(hybrid, hybrid_checkpoint) -> str:  # type: ignore[no-untyped-def]
    """PyTorch's greedy continuation (a full forward per token), decoded by the gateway."""
    client, _ = hybrid
    ids = client.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    model = load_checkpoint(hybrid_checkpoint).model
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(NEW):
            seq = torch.cat([seq, model.logits_full(seq)[0, -1].argmax().view(1, 1)], dim=1)
    new = seq[0, len(ids) :].tolist()
    return client.post("/detokenize", json={"tokens": new}).json()["prompt"]


GREEDY = {"prompt": PROMPT, "max_new_tokens": NEW, "temperature": 0, "ignore_eos": True}


def test_generate_and_its_stream_equal_pytorch(hybrid, expected: str) -> None:  # type: ignore[no-untyped-def]
    client, _ = hybrid
    r = client.post("/generate", json=GREEDY)
    assert r.status_code == 200, r.text
    assert r.json()["text"] == expected and r.json()["usage"]["completion_tokens"] == NEW
    chunks, final = generate_events(client, GREEDY)
    assert "".join(c["text"] for c in chunks) == expected and final["finish_reason"] == "length"


def test_openai_completion_equals_pytorch(hybrid, expected: str) -> None:  # type: ignore[no-untyped-def]
    client, _ = hybrid
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    model = oai.models.list().data[0].id
    extra = {"min_tokens": NEW}  # the end-of-sequence token is banned: the full length, as ignore_eos
    out = oai.completions.create(model=model, prompt=PROMPT, max_tokens=NEW, temperature=0, extra_body=extra)
    assert out.choices[0].text == expected


def test_grpc_generate_equals_pytorch(hybrid, expected: str) -> None:  # type: ignore[no-untyped-def]
    _, stub = hybrid
    out = stub.Generate(pb.GenerateRequest(prompt=PROMPT, max_new_tokens=NEW, temperature=0, ignore_eos=True))
    assert out.text == expected


def test_the_next_turn_hits_the_whole_state_and_metrics_say_so(hybrid) -> None:  # type: ignore[no-untyped-def]
    client, _ = hybrid
    first = client.post("/generate", json={**GREEDY, "prompt": "class Point:"}).json()
    follow = {**GREEDY, "prompt": "class Point:" + first["text"] + " return"}
    second = client.post("/generate", json=follow).json()
    assert second["timings"]["cached_tokens"] > 0, second["timings"]
    metrics = client.get("/metrics").text
    assert "kiln_prefix_cache_hits_total" in metrics
