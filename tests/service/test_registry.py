"""The registry's watcher: a model that appears after start-up is served, `.pending` entries
answer 503 `model_unavailable` until then, and /readyz reports each model's state."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready
from tests.service.vision.images import scene_png


def until(check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.fixture
def repo(tmp_path: Path, tiny_lm_vision_repo: Path) -> Path:
    """A repository holding only the LM; the test adds the classifier later."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(tiny_lm_vision_repo / "tiny-lm", root / "tiny-lm")
    return root


def classify(client: TestClient, query: str = ""):  # type: ignore[no-untyped-def]
    return client.post(f"/classify{query}", files=[("file", ("a.png", scene_png(1), "image/png"))])


def test_a_classifier_exported_after_start_up_is_served(repo: Path, tiny_lm_vision_repo: Path, tmp_path: Path) -> None:
    (repo / "tiny-vit.pending").write_text("")
    app = create_app(Settings(model_repository=repo, grpc_port=0, max_batch=2, max_seq_len=128))
    with TestClient(app) as client:
        wait_ready(client)  # the LM alone makes the gateway ready
        assert client.post("/generate", json={"prompt": "def", "max_new_tokens": 2}).status_code == 200
        r = classify(client)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable", r.text
        assert "still being built" in r.json()["error"]["message"]
        ready = client.get("/readyz").json()
        assert ready["models"] == {"tiny-vit": "loading", "tiny-lm": "ready"}
        one = client.get("/readyz", params={"model": "tiny-vit"})
        assert one.status_code == 503 and one.json()["state"] == "loading"
        # A half-staged export (a hidden sibling, as export's staged_entry writes) is ignored.
        shutil.copytree(tiny_lm_vision_repo / "tiny-vit", repo / ".tiny-vit.staging")
        time.sleep(1.5)
        assert classify(client).status_code == 503
        # The finished entry is swapped in with a rename, then the marker goes.
        (repo / ".tiny-vit.staging").rename(repo / "tiny-vit")
        (repo / "tiny-vit.pending").unlink()
        until(lambda: client.get("/readyz", params={"model": "tiny-vit"}).status_code == 200)
        r = classify(client)
        assert r.status_code == 200 and r.json()["model"] == "tiny-vit"
        assert client.get("/readyz").json()["models"] == {"tiny-lm": "ready", "tiny-vit": "ready"}


def test_a_failed_build_is_reported_and_no_classifier_at_all_is_a_501(repo: Path) -> None:
    (repo / "tiny-vit.pending").write_text("training crashed: see runs/demo-vit-build.log")
    app = create_app(Settings(model_repository=repo, grpc_port=0, max_batch=2, max_seq_len=128))
    with TestClient(app) as client:
        wait_ready(client)
        r = classify(client)
        assert r.status_code == 503 and "failed to build: training crashed" in r.json()["error"]["message"]
        assert client.get("/readyz").json()["models"]["tiny-vit"] == "failed"
        (repo / "tiny-vit.pending").unlink()
        until(lambda: classify(client).status_code == 501)


def test_a_broken_entry_is_retried_once_re_exported(repo: Path, tiny_lm_vision_repo: Path) -> None:
    app = create_app(Settings(model_repository=repo, grpc_port=0, max_batch=2, max_seq_len=128))
    with TestClient(app) as client:
        wait_ready(client)
        broken = repo / "tiny-vit"
        broken.mkdir()
        (broken / "kiln.json").write_text('{"manifest_version": 2, "kind": "image-classification"}')
        until(lambda: "tiny-vit" in client.get("/readyz").json()["failed"])
        r = classify(client, "?model=tiny-vit")
        assert r.status_code == 503 and "required field 'name' is missing" in r.json()["error"]["message"]
        staged = repo / ".tiny-vit.new"
        shutil.copytree(tiny_lm_vision_repo / "tiny-vit", staged)
        shutil.rmtree(broken)
        staged.rename(broken)
        until(lambda: classify(client).status_code == 200)
        assert client.get("/readyz").json()["failed"] == {}
