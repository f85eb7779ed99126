"""Prompts in any script, emoji, combining marks, and invalid surrogates."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready

PROMPTS = [
    "🙂🚀 emoji 👩‍👩‍👧",
    "你好世界，日本語",
    "e\u0301 combining a\u0308\u0323",
    "مرحبا بالعالم",
    "\u200b\ufeffzero width",
]


@pytest.fixture(scope="module")
def client(tiny_lm_repo):  # type: ignore[no-untyped-def]
    with TestClient(create_app(Settings(model_repository=tiny_lm_repo, grpc_port=0))) as c:
        wait_ready(c)
        yield c


def stream_chunks(client: TestClient, body: dict) -> tuple[list[str], dict]:
    chunks, final, event = [], None, None
    with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and line[5:].strip() != "[DONE]":
                data = json.loads(line[5:])
                if event == "finish":
                    final = data
                else:
                    chunks.append(data["text"])
    assert final is not None
    return chunks, final


@pytest.mark.parametrize("prompt", PROMPTS)
def test_any_script_streams_the_same_text_as_non_streaming(client: TestClient, prompt: str) -> None:
    body = {"prompt": prompt, "max_new_tokens": 24, "temperature": 1.0, "seed": 11, "ignore_eos": True}
    full = client.post("/generate", json=body).json()
    chunks, final = stream_chunks(client, body)
    assert "".join(chunks) == full["text"]
    assert final["usage"] == full["usage"]
    for chunk in chunks:
        # A chunk never ends inside a character: it round-trips through strict UTF-8.
        assert chunk.encode("utf-8").decode("utf-8") == chunk


def test_lone_surrogates_are_a_clear_400(client: TestClient) -> None:
    raw = b'{"prompt": "abc \\ud800 def", "max_new_tokens": 2}'
    r = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_prompt"
    r = client.post(
        "/v1/completions",
        content=raw.replace(b"max_new_tokens", b"max_tokens").replace(b"{", b'{"model": "tiny-lm", ', 1),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_prompt"
