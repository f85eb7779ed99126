"""Every family, exported and served by the real gateway, generates transformers' greedy tokens.

One gateway per graph variant serves all the families' entries from one repository. Two
prompts of different lengths go to each model at once (the engine batches them, prefilling in
chunks of 8 tokens), with `ignore_eos`, and the stream's token ids and the final text must be
what `generate(do_sample=False)` gives on the same prompt ids.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient

from contracts.manifest import TextManifest
from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready
from tests.families import FAMILIES

pytestmark = pytest.mark.slow
PROMPTS = ("def fib(n):\n    if n < 2:\n        return n\n", "class Point:")
NEW_TOKENS = 16


@pytest.fixture(scope="module", params=["fused", "fp32"])
def served(request, family_zoo):  # type: ignore[no-untyped-def]
    for name in FAMILIES:
        family_zoo.export(name)
    settings = Settings(
        model_repository=family_zoo.repository,
        grpc_port=0,
        max_batch=2,
        max_seq_len=64,
        prefill_chunk_tokens=8,
        lm_variant=request.param,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield request.param, client


def _stream(client: TestClient, model: str, prompt: str) -> tuple[list[int], dict]:
    body = {"model": model, "prompt": prompt, "max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
    tokens, text, final = [], "", None
    with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        event = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and line[5:].strip() != "[DONE]":
                data = json.loads(line[5:])
                if event == "finish":
                    final = data
                else:
                    tokens.append(data["token"])
                    text += data["text"]
    assert final is not None
    return tokens, {**final, "text": text}


def _greedy(zoo, name: str, prompt: str) -> list[int]:  # type: ignore[no-untyped-def]
    """transformers' greedy continuation of the prompt ids the gateway builds (BOS + ids)."""
    entry = zoo.entry(name)
    manifest = TextManifest.read(entry)
    ids = zoo_tokenizer(entry).encode(prompt, add_special_tokens=False).ids
    ids = [manifest.bos_token_id, *ids] if manifest.add_bos else ids
    hf = zoo.reference(name)
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=[],
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def zoo_tokenizer(entry):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(entry / "tokenizer.json"))


@pytest.mark.parametrize("name", FAMILIES)
def test_served_greedy_tokens_are_transformers_generate(served, family_zoo, name: str) -> None:  # type: ignore[no-untyped-def]
    variant, client = served
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(lambda p: _stream(client, name, p), PROMPTS))
    tokenizer = zoo_tokenizer(family_zoo.entry(name))
    for prompt, (streamed, final) in zip(PROMPTS, results, strict=True):
        want = _greedy(family_zoo, name, prompt)
        assert len(want) == NEW_TOKENS and final["usage"]["completion_tokens"] == NEW_TOKENS
        assert final["finish_reason"] == "length"
        # Tokens whose text is still incomplete (a split UTF-8 character) reach the stream with
        # a later one (or the final flush, id -1), so the stream's ids are the generated ids in
        # order, minus those.
        it = iter(want)
        assert all(t in it for t in streamed if t >= 0), (variant, name, prompt, streamed, want)
        assert final["text"] == tokenizer.decode(want, skip_special_tokens=True), (variant, name, prompt)
