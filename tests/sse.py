"""Reading Kiln's /generate Server-Sent Events in tests: text chunks, then the finish event."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient


def generate_events(client: TestClient, body: dict) -> tuple[list[dict], dict]:
    """(chunks, finish payload) of a streaming /generate; asserts the stream ended properly."""
    chunks, final, event = [], None, None
    with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                if event == "finish":
                    final = json.loads(data)
                else:
                    assert event is None, f"unexpected event {event!r}: {data}"
                    chunks.append(json.loads(data))
    assert final is not None
    return chunks, final
