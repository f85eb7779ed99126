"""The shared-prefix mix's checkers against a real server: the exactness replay reports a
changed output, the isolation probe sees 0 cached tokens while the owner's repeat hits, and the
replay sample prefers responses the cache served."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from loadtests.prefix_mix import (
    PROBE_KEYS,
    QUESTIONS,
    USER_KEYS,
    after_load,
    all_keys,
    bearer,
    generate_stream,
    pick,
    replay,
    system_prompt,
)
from tests.live_server import Server


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_replay_and_probes_catch_what_they_guard(tiny_lm_repo: Path) -> None:
    server = Server(tiny_lm_repo, KILN_API_KEYS=all_keys(), KILN_GRPC_PORT="0")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            body = {"prompt": system_prompt(0, 80) + QUESTIONS[0], "max_new_tokens": 8, "temperature": 0}
            out = generate_stream(client, body, USER_KEYS[0])
            assert len(out["tokens"]) > 0 and out["cached"] == 0  # the first request of this key
            chat = {
                "model": "tiny-lm",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 6,
                "temperature": 0,
            }
            r = client.post("/v1/chat/completions", json=chat, headers=bearer(USER_KEYS[1]))
            assert r.status_code == 200, r.text
            content = r.json()["choices"][0]["message"]["content"]
            assert client.post("/generate", json=body).status_code == 401  # keys are on
        good = [
            {"kind": "generate", "key": USER_KEYS[0], "body": body, **out},
            {"kind": "chat", "key": USER_KEYS[1], "body": chat, "content": content, "cached": 0},
        ]
        bad = [
            {**good[0], "tokens": [*out["tokens"][:-1], out["tokens"][-1] + 1], "cached": 5},
            {**good[1], "content": content + "x", "cached": 3},
        ]
        assert replay(good, server.url) == {"checked": 2, "hits": 0, "mismatches": []}
        assert replay(bad, server.url)["mismatches"] == [
            {"kind": "generate", "cached": 5},
            {"kind": "chat", "cached": 3},
        ]
        seen = after_load(server.url, 80)
        assert all(hit > 0 for hit in seen["owner"])  # each owner's repeat is served from the cache
        assert seen["probe"] == [0] * len(USER_KEYS)  # the same prompt from a fresh key is not
        assert set(PROBE_KEYS[: len(USER_KEYS)]).isdisjoint(USER_KEYS)
    finally:
        server.stop()


def test_the_replay_sample_takes_cache_hits_first(tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    rows = [{"kind": "generate", "cached": c, "n": i} for i, c in enumerate((0, 7, 0, 3, 0))]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sorted(s["n"] for s in pick(samples, 2)) == [1, 3]
    assert len(pick(samples, 4)) == 4 and len(pick(samples, 9)) == 5
    assert pick(tmp_path / "absent.jsonl", 3) == []
