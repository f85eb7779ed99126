"""The playground's routes (the browser tests are tests/service/playground): public files, the
page's config, KILN_PLAYGROUND=false, and the files shipping inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.playground import FILES
from service.app import create_app
from service.playground import STATIC
from service.settings import Settings

KEY = "playground-test-key"


@pytest.fixture(scope="module")
def keyed(tiny_lm_repo: Path):  # type: ignore[no-untyped-def]
    settings = Settings(model_repository=tiny_lm_repo, grpc_port=0, max_batch=1, max_seq_len=64, api_keys=KEY)
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_page_and_its_files_need_no_key_but_the_api_does(keyed: TestClient) -> None:
    page = keyed.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/playground/app.js">' in page.text
    assert {"app.js", "api.js", "text.js", "image.js", "style.css"} <= set(FILES)
    for name in FILES:
        r = keyed.get(f"/playground/{name}")
        assert r.status_code == 200 and r.content == (STATIC / name).read_bytes()
        assert r.headers["content-type"].split(";")[0] in ("text/javascript", "text/css")
    config = keyed.get("/playground/config.json").json()
    chat_served = "/v1/chat/completions" in keyed.get("/openapi.json", headers={"X-API-Key": KEY}).json()["paths"]
    assert config == {"api_keys": True, "chat": chat_served}
    assert keyed.get("/v1/models").status_code == 401
    for other in ("/playground/__init__.py", "/playground/../settings.py"):  # only the listed files
        assert keyed.get(other).status_code == 401


def test_no_page_references_anything_off_this_server() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path  # no CDN: the page works offline


def test_kiln_playground_false_turns_it_off(tiny_lm_repo: Path) -> None:
    settings = Settings(model_repository=tiny_lm_repo, grpc_port=0, max_batch=1, max_seq_len=64, playground=False)
    with TestClient(create_app(settings)) as client:
        for path in ("/", "/playground/app.js", "/playground/config.json"):
            r = client.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path


@pytest.mark.slow
def test_the_wheel_carries_the_page(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3]
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip, "-w", str(tmp_path), str(root)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("kiln-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in STATIC.iterdir():
        assert f"service/playground/static/{path.name}" in names
