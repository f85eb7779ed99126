"""Chat against what `make serve` serves: the committed demo LM (checkpoints/demo-lm) exported
as `make export` exports it, its own chat template, and the official `openai` client over the
real app (FastAPI's TestClient as the transport, as in test_chat.py).
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready
from tests.service.api.test_chat import schema_answers

DEMO = Path(__file__).resolve().parents[3] / "checkpoints" / "demo-lm"
MESSAGES = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_client(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    from export.pipeline import export_checkpoint

    repo = tmp_path_factory.mktemp("demo") / "model_repository"
    export_checkpoint(DEMO, repo, "demo-lm", variants=False)  # the served fused graph, verified
    settings = Settings(model_repository=repo, grpc_port=0, max_batch=4, max_seq_len=512)
    with TestClient(create_app(settings)) as app_client:
        wait_ready(app_client)
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=app_client, max_retries=0)


def test_the_demo_chats_with_n_logprobs_and_a_stream(demo_client: openai.OpenAI) -> None:
    out = demo_client.chat.completions.create(
        model="demo-lm", messages=MESSAGES, max_tokens=24, n=2, temperature=0.7, seed=1, logprobs=True, top_logprobs=2
    )
    assert len(out.choices) == 2 and out.usage.completion_tokens == 48
    first = out.choices[0]
    assert first.message.role == "assistant" and first.message.content
    assert first.logprobs is not None and len(first.logprobs.content) == 24
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in first.logprobs.content)
    assert out.choices[0].message.content != out.choices[1].message.content  # two samples, not one twice

    chunks = list(
        demo_client.chat.completions.create(
            model="demo-lm",
            messages=MESSAGES,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    greedy = demo_client.chat.completions.create(model="demo-lm", messages=MESSAGES, max_tokens=16, temperature=0)
    assert streamed == greedy.choices[0].message.content  # streaming changes the wire, not the text


def test_the_demo_answers_a_json_schema_with_valid_json(demo_client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        # Both bounds: with only a maximum, "-" and digits without end are valid JSON for the schema,
        # and a sampled model can write them until max_tokens (the continued demo LM did).
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "n": {"type": "integer", "minimum": -(10**6), "maximum": 10**6},
        },
        "required": ["name", "n"],
        "additionalProperties": False,
    }
    answers = schema_answers(demo_client, "demo-lm", MESSAGES, "t", schema, range(3), max_tokens=256, temperature=0.8)
    for value in answers:
        assert set(value) == {"name", "n"} and isinstance(value["n"], int) and 0 <= len(value["name"]) <= 12
        assert -(10**6) <= value["n"] <= 10**6
