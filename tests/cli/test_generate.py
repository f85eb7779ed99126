"""`kiln generate` and `kiln chat` one-shot: in-process and against a server, the same text."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import kiln
from tests.live_server import Server

pytestmark = pytest.mark.slow

GREEDY = ("--max-tokens", "12", "--temperature", "0")


def test_in_process_greedy_text_is_what_the_server_generates(tiny_lm_vision_repo: Path, cli_server: Server) -> None:
    local = kiln("generate", "def fib(n):", "--repository", str(tiny_lm_vision_repo), *GREEDY)
    assert local.returncode == 0, local.stderr
    served = httpx.post(
        cli_server.url + "/generate", json={"prompt": "def fib(n):", "max_new_tokens": 12, "temperature": 0}
    ).json()
    assert local.stdout == "def fib(n):" + served["text"] + "\n"
    assert "6 prompt + 12 tokens" in local.stderr and "finish: length" in local.stderr, local.stderr
    remote = kiln("generate", "def fib(n):", "--url", cli_server.url, *GREEDY)
    assert remote.returncode == 0 and remote.stdout == local.stdout, remote.stderr


def test_a_prompt_from_stdin_with_a_seed_samples_the_same_twice(tiny_lm_vision_repo: Path) -> None:
    args = ("generate", "-", "--repository", str(tiny_lm_vision_repo), "--temperature", "1.0", "--seed", "3")
    a, b = kiln(*args, stdin="import os\n"), kiln(*args, stdin="import os\n")
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.startswith("import os\n"), a.stderr
    c = kiln(*args[:-1], "4", stdin="import os\n")
    assert c.stdout != a.stdout


def test_a_stop_string_ends_the_text(tiny_lm_vision_repo: Path) -> None:
    full = kiln("generate", "def fib(n):", "--repository", str(tiny_lm_vision_repo), *GREEDY).stdout
    generated = full.removeprefix("def fib(n):").rstrip("\n")
    stop = generated[4:6]
    assert len(stop) == 2
    cut = kiln("generate", "def fib(n):", "--repository", str(tiny_lm_vision_repo), *GREEDY, "--stop", stop)
    assert cut.stdout == "def fib(n):" + generated[: generated.index(stop)] + "\n"
    assert "finish: stop" in cut.stderr


def test_a_refused_request_is_one_line_naming_the_limit(tiny_lm_vision_repo: Path, cli_server: Server) -> None:
    local = kiln("generate", "x", "--repository", str(tiny_lm_vision_repo), "--top-p", "0")
    assert local.returncode == 1 and local.stderr.strip().startswith("kiln generate: error: `top_p` must be")
    remote = kiln("generate", "x", "--url", cli_server.url, "--max-tokens", "100000")
    assert remote.returncode == 1 and "HTTP 400 max_new_tokens_too_large" in remote.stderr, remote.stderr
    missing = kiln("generate", "x", "--repository", str(tiny_lm_vision_repo), "--model", "nope")
    assert missing.returncode == 1 and "holds no kiln.json" in missing.stderr


def test_chat_against_a_server(cli_server: Server) -> None:
    if "/v1/chat/completions" not in httpx.get(cli_server.url + "/openapi.json").json()["paths"]:
        pytest.skip("this build has no /v1/chat/completions route yet")
    proc = kiln("chat", "write a loop", "--url", cli_server.url, "--max-tokens", "8", "--temperature", "0")
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    assert "8 tokens" in proc.stderr or "finish:" in proc.stderr


def test_chat_in_process_without_a_chat_template_says_what_to_do(tiny_lm_vision_repo: Path) -> None:
    proc = kiln("chat", "hi", "--repository", str(tiny_lm_vision_repo))
    if proc.returncode == 0:
        pytest.skip("this build renders chat templates in-process")
    assert proc.returncode == 1 and "--url" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
