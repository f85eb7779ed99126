"""The Dockerfiles pass hadolint and keep the properties the deployment relies on."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.deploy.support import DOCKERFILES, ROOT, require_tool

NAMES = [p.stem for p in DOCKERFILES]


def test_all_images_present() -> None:
    assert set(NAMES) == {"gateway", "export", "triton"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=NAMES)
def test_hadolint(path) -> None:  # type: ignore[no-untyped-def]
    hadolint = require_tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", "-c", str(ROOT / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_is_not_a_rubber_stamp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    hadolint = require_tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nCMD python app.py\n")
    proc = subprocess.run([hadolint, "--no-color", "-c", str(ROOT / ".hadolint.yaml"), str(bad)], capture_output=True)
    assert proc.returncode != 0


def _stages(text: str) -> list[str]:
    return re.split(r"^FROM ", text, flags=re.M)[1:]


def _instructions(stage: str, name: str) -> list[str]:
    return re.findall(rf"^{name} (.+(?:\\\n.+)*)$", stage, re.M)


def test_gateway_image() -> None:
    text = (ROOT / "docker" / "gateway.Dockerfile").read_text()
    assert re.search(r"^ARG BASE=\S+", text, re.M), "base image must be a build argument"
    stages = _stages(text)
    assert len(stages) >= 2 and all(s.startswith("${BASE}") for s in stages), "multi-stage, both from ARG BASE"
    final = stages[-1]
    assert not re.search(r"pip install[^\n]*(torch|\[export)", text), "the gateway image never installs torch"
    assert "'torch' not in sys.modules" in text, "the build checks that the app imports without torch"
    for tool in ("gcc", "build-essential", "apt-get", "pip install"):
        assert tool not in final, f"{tool} in the final stage"
    (user,) = _instructions(final, "USER")
    assert user.split(":")[0] not in ("root", "0")
    assert _instructions(final, "HEALTHCHECK")
    (entrypoint,) = _instructions(final, "ENTRYPOINT")
    assert isinstance(json.loads(entrypoint), list), "exec form, so SIGTERM reaches the server"


def test_export_image_pins_cpu_torch() -> None:
    text = (ROOT / "docker" / "export.Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    (pinned,) = re.findall(r'"torch==([^"]+)"', pyproject)
    assert f"ARG TORCH_VERSION={pinned}" in text
    assert "download.pytorch.org/whl/cpu" in text
    assert json.loads(_instructions(_stages(text)[-1], "ENTRYPOINT")[0]) == ["kiln", "export"]


def test_triton_image() -> None:
    text = (ROOT / "docker" / "triton.Dockerfile").read_text()
    (default,) = re.findall(r"^ARG TRITON_IMAGE=(\S+)$", text, re.M)
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", default)
    assert re.search(r"^FROM \$\{TRITON_IMAGE\}", text, re.M)
    assert "pip install" in text and " ." in text, "Kiln is installed for the python backend"
    (user,) = _instructions(text, "USER")
    assert user.split(":")[0] not in ("root", "0")


def test_dockerignore_keeps_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in lines, "deny by default"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for path in DOCKERFILES:
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", path.read_text(), re.M):
            copied |= {s.rstrip("/") for s in src.split() if not s.startswith("--")}
    assert copied <= allowed, f"COPY sources excluded by .dockerignore: {copied - allowed}"
