"""`kiln generate` and `kiln chat` one-shot: in-process and against a server, the same text."""

from __future__ import annotations

import os
import sys
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


def test_chat_in_process_is_what_the_server_answers(tiny_lm_vision_repo: Path, cli_server: Server) -> None:
    args = ("chat", "write a loop", "--system", "be brief", "--max-tokens", "8", "--temperature", "0")
    local = kiln(*args, "--repository", str(tiny_lm_vision_repo))
    remote = kiln(*args, "--url", cli_server.url)
    assert local.returncode == 0 and remote.returncode == 0, local.stderr + remote.stderr
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "write a loop"}]
    body = {"model": "tiny-lm", "messages": messages, "max_tokens": 8, "temperature": 0}
    served = httpx.post(cli_server.url + "/v1/chat/completions", json=body).json()
    reply = served["choices"][0]["message"]["content"]
    assert local.stdout == remote.stdout == reply + "\n"
    assert f"{served['usage']['prompt_tokens']} prompt + " in local.stderr, local.stderr


def test_chat_without_a_template_is_one_line_naming_the_setting(tiny_lm_vision_repo: Path, tmp_path: Path) -> None:
    import json
    import shutil

    entry = tmp_path / "repo" / "tiny-lm"
    shutil.copytree(tiny_lm_vision_repo / "tiny-lm", entry)
    (entry / "chat_template.jinja").unlink()
    manifest = json.loads((entry / "kiln.json").read_text())
    manifest.pop("chat_template")
    (entry / "kiln.json").write_text(json.dumps(manifest))
    proc = kiln("chat", "hi", "--repository", str(entry.parent))
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "KILN_DEFAULT_CHAT_TEMPLATE" in proc.stderr


def test_the_chat_repl_keeps_the_conversation_until_reset(tiny_lm_vision_repo: Path, tmp_path: Path) -> None:
    import pexpect

    child = pexpect.spawn(
        sys.executable,
        ["-m", "cli", "chat", "--repository", str(tiny_lm_vision_repo), "--max-tokens", "4", "--temperature", "0"],
        env={**os.environ, "KILN_HISTORY": str(tmp_path / "h")},
        encoding="utf-8",
        timeout=60,
    )
    child.expect("you> ")
    child.sendline("hello")
    child.expect(r"\[(\d+) prompt \+ ")
    first = int(child.match.group(1))
    child.sendline("again")
    child.expect(r"\[(\d+) prompt \+ ")
    assert int(child.match.group(1)) > first + 4  # the first turn and its reply ride along
    child.sendline("/reset")
    child.expect(r"\[reset\]")
    child.sendline("hello")
    child.expect(r"\[(\d+) prompt \+ ")
    assert int(child.match.group(1)) == first
    child.sendeof()
    child.expect(pexpect.EOF)
