"""Smoke build of the gateway image with buildah from a local debootstrap base, then run it.

Base images cannot be pulled here, so the base is made locally (debootstrap bookworm minbase with
python3-venv) and passed as `--build-arg BASE=...`; pip cannot reach PyPI from inside the build chroot,
so wheels are downloaded on the host and installed with `--no-index`. This is a smoke build of the real
Dockerfile, not the production image (Debian's python3 3.11.2 instead of python:3.11-slim).
Needs root, buildah and debootstrap; the base rootfs and wheels are cached in $KILN_SMOKE_CACHE
(default ~/.cache/kiln-deploy). Run: pytest -m slow tests/deploy/test_image_build.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.deploy.support import INSTALL_HINT, ROOT
from tests.live_server import free_port

pytestmark = pytest.mark.slow

BASE_TAG = "localhost/local/py-base:bookworm"
# Per process: the layer cache is shared by every run on the machine, the image under test is not
# (two concurrent runs with one tag would remove each other's image).
IMAGE_TAG = f"localhost/kiln-gateway:smoke-{os.getpid()}"
CACHE = Path(os.environ.get("KILN_SMOKE_CACHE", Path.home() / ".cache" / "kiln-deploy"))
# vfs storage copies the whole rootfs into every layer: the build peaked at 2.3 GiB over what the cached
# base takes (measured with df every 2 s); the margin is for whatever else the suite writes meanwhile.
FREE_BYTES_NEEDED = 4 << 30


def _require() -> tuple[str, str]:
    if os.geteuid() != 0:
        pytest.skip("buildah smoke build needs root (vfs storage + chroot isolation)")
    buildah, debootstrap = shutil.which("buildah"), shutil.which("debootstrap")
    if not buildah or not debootstrap:
        pytest.skip(f"buildah/debootstrap not installed: {INSTALL_HINT} as root")
    CACHE.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(CACHE).free
    if free < FREE_BYTES_NEEDED:
        pytest.skip(f"the vfs build needs {FREE_BYTES_NEEDED >> 30} GiB free under {CACHE}; {free / 2**30:.1f} GiB is")
    return buildah, debootstrap


def _run(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _cmdline(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [Path(a).name if i == 0 else a for i, a in enumerate(raw.decode(errors="replace").split("\0")[:-1])]


def _is_kiln_serve(cmd: list[str]) -> bool:
    """The server itself: the venv's python running the `kiln` script (not buildah's own helpers)."""
    return len(cmd) == 3 and cmd[0].startswith("python") and Path(cmd[1]).name == "kiln" and cmd[2] == "serve"


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _descendants(root: int) -> list[int]:
    """Processes below `root` (the `buildah run` this test started)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(_parent(int(entry.name)), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _base_rootfs_tar(debootstrap: str) -> Path:
    tar = CACHE / "rootfs.tar"
    if tar.exists():
        return tar
    rootfs = CACHE / "rootfs.partial"
    shutil.rmtree(rootfs, ignore_errors=True)
    proc = subprocess.run(
        [debootstrap, "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm", str(rootfs)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.skip(f"debootstrap failed (no Debian mirror reachable?): {proc.stderr[-500:]}")
    _run(["tar", "-C", str(rootfs), "-cf", str(tar) + ".tmp", "."])
    os.replace(str(tar) + ".tmp", tar)
    shutil.rmtree(rootfs)
    return tar


def _wheels() -> Path:
    """The gateway's runtime dependencies (pyproject) plus the build backend, as wheels for the chroot."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [*project["project"]["dependencies"], *project["build-system"]["requires"], "wheel"]
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(wheels), *reqs]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"pip download of the gateway's wheels failed (offline?): {proc.stderr[-500:]}")
    return wheels


def _context(tmp: Path, wheels: Path) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir()
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy2(ROOT / name, ctx / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("service", "export", "contracts", "cli", "docker"):
        shutil.copytree(ROOT / name, ctx / name, ignore=ignore)
    for whl in wheels.iterdir():
        shutil.copy2(whl, ctx / "docker" / "wheels" / whl.name)
    return ctx


def test_gateway_image_builds_runs_and_answers_healthz(tmp_path: Path, tiny_lm_repo: Path) -> None:
    buildah, debootstrap = _require()
    storage = CACHE / "buildah-storage"
    bh = [buildah, "--root", str(storage), "--runroot", str(tmp_path / "runroot"), "--storage-driver", "vfs"]

    started = time.monotonic()
    if subprocess.run([*bh, "inspect", "--type", "image", BASE_TAG], capture_output=True).returncode != 0:
        tar = _base_rootfs_tar(debootstrap)
        base = tmp_path / "base"
        base.mkdir()
        os.link(tar, base / "rootfs.tar") if tar.stat().st_dev == base.stat().st_dev else shutil.copy(tar, base)
        (base / "Containerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["python3"]\n')
        _run([*bh, "bud", "--isolation", "chroot", "-t", BASE_TAG, str(base)])
    ctx = _context(tmp_path, _wheels())
    try:
        _build_run_and_probe(bh, ctx, tmp_path, tiny_lm_repo, started)
    finally:
        # vfs copies every layer: keep only the cached base image between runs, whatever happened.
        subprocess.run([*bh, "rmi", IMAGE_TAG], capture_output=True)
        subprocess.run([*bh, "rmi", "--prune"], capture_output=True)


def _build_run_and_probe(bh: list[str], ctx: Path, tmp_path: Path, tiny_lm_repo: Path, started: float) -> None:
    _run(
        [
            *bh,
            "bud",
            "--isolation",
            "chroot",
            "--format",
            "docker",  # HEALTHCHECK is a Docker-format field; OCI images drop it
            "--build-arg",
            f"BASE={BASE_TAG}",
            "--build-arg",
            "PIP_ARGS=--no-index --find-links /tmp/wheels",
            "-f",
            str(ctx / "docker" / "gateway.Dockerfile"),
            "-t",
            IMAGE_TAG,
            str(ctx),
        ],
        timeout=1200,
    )
    build_s = time.monotonic() - started

    config = json.loads(_run([*bh, "inspect", "--type", "image", IMAGE_TAG]).stdout)["Docker"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["kiln", "serve"]
    assert config["Healthcheck"]["Test"][0] == "CMD"

    ctr = _run([*bh, "from", IMAGE_TAG]).stdout.strip()
    try:
        run = [*bh, "run", "--isolation", "chroot"]
        assert _run([*run, ctr, "--", "id", "-u"]).stdout.strip() == "10001"
        probe = (
            "import importlib.util as u, shutil; print(u.find_spec('torch'), shutil.which('gcc'), shutil.which('pip'))"
        )
        assert _run([*run, ctr, "--", "python3", "-c", probe]).stdout.split() == ["None", "None", "None"]

        models = tmp_path / "models"
        shutil.copytree(tiny_lm_repo, models)
        subprocess.run(["chmod", "-R", "a+rX", str(models)], check=True)
        port, grpc_port = free_port(), free_port()
        env = {"KILN_HOST": "127.0.0.1", "KILN_PORT": str(port), "KILN_GRPC_PORT": str(grpc_port)}
        env_args = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
        server = subprocess.Popen(
            [*run, "--volume", f"{models}:/models:ro", *env_args, ctr, "--", *config["Entrypoint"]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 90
            ready = None
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    ready = httpx.get(f"{url}/readyz", timeout=2)
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert ready is not None and ready.status_code == 200, ready.text if ready else "no answer"
            health = httpx.get(f"{url}/healthz", timeout=5)
            assert health.status_code == 200 and health.json() == {"status": "ok"}
            assert "kiln_model_ready" in httpx.get(f"{url}/metrics", timeout=5).text
            # The image's own HEALTHCHECK command succeeds against the running server.
            check = config["Healthcheck"]["Test"][1:]
            _run([*run, *env_args, ctr, "--", *check], timeout=60)
            # Exec-form entrypoint: the server is the container's process itself (no shell in between), so
            # SIGTERM (what the kubelet sends to it) drains and exits 0, and `buildah run` exits with it.
            (pid,) = [p for p in _descendants(server.pid) if _is_kiln_serve(_cmdline(p))]
            assert "sh" not in Path(_cmdline(_parent(pid))[0]).name, "a shell wraps the entrypoint"
            os.kill(pid, signal.SIGTERM)
            code = server.wait(60)
            log = server.stdout.read() if server.stdout else ""
            assert code == 0 and "SIGTERM: draining" in log, log
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)
    finally:
        subprocess.run([*bh, "rm", ctr], capture_output=True)
    print(f"gateway image built in {build_s:.0f}s and served /healthz, /readyz, /metrics as uid 10001")
