"""`kiln generate --interactive` through a pseudo-terminal: streaming, flags, /reset, Ctrl-C, history."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.slow

STATUS = r"\[[^\n]*finish: (\w+)\]"


def inherit_ignored_sigint() -> None:
    """Start the REPL as a background job of a non-interactive shell would (`make test &`):
    with SIGINT ignored. Ctrl-C must work anyway, so every REPL here starts that way, whatever
    disposition the test runner itself was started with."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def repl(repo: Path, tmp_path: Path, *args: str, **env: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "cli", "generate", "-i", "--repository", str(repo), *args],
        env={**os.environ, "KILN_HISTORY": str(tmp_path / "history"), **env},
        encoding="utf-8",
        timeout=60,
        preexec_fn=inherit_ignored_sigint,
    )
    child.expect(">>> ")
    return child


def test_prompts_stream_flags_change_and_reset_restores_them(tiny_lm_vision_repo: Path, tmp_path: Path) -> None:
    child = repl(tiny_lm_vision_repo, tmp_path, "--max-tokens", "6", "--temperature", "0")
    child.sendline("def fib(n):")
    child.expect(STATUS)
    assert child.match.group(1) == "length" and "+ 6 tokens" in child.match.group(0)
    child.expect(">>> ")
    child.sendline("/set max_tokens 3")
    child.expect(r"\[max_tokens = 3\]")
    child.sendline("def fib(n):")
    child.expect(r"\+ 3 tokens")
    child.sendline("/show")
    child.expect(r"'max_new_tokens': 3")
    child.sendline("/reset")
    child.expect(r"\[reset\]")
    child.sendline("/show")
    child.expect(r"'max_new_tokens': 6")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    history = (tmp_path / "history").read_text()
    assert "def fib(n):" in history and "/set max_tokens 3" in history


def test_ctrl_c_stops_a_generation_and_the_session_goes_on(tiny_lm_vision_repo: Path, tmp_path: Path) -> None:
    # 80 ms per engine step; n-gram speculation may take a few tokens a step, so 200 tokens
    # still take seconds. One slot (in-process max_batch 1): the next prompt only runs if the
    # stopped one freed it.
    child = repl(tiny_lm_vision_repo, tmp_path, "--max-tokens", "200", KILN_FAULT_STEP_DELAY_MS="80", KILN_DEBUG="")
    child.sendline("import os")
    child.expect("import os\r\n")  # the echo of the typed line
    child.expect(r"\S", timeout=30)  # the first streamed text
    child.sendintr()
    child.expect(r"\[stopped\]", timeout=10)
    child.expect(STATUS)
    assert child.match.group(1) == "cancelled"
    child.expect(">>> ")
    child.sendline("/set max_tokens 2")
    child.sendline("def f():")
    child.expect(STATUS, timeout=8)  # well before the stopped one would have ended by itself
    assert child.match.group(1) == "length"
    # Keys go in only once the prompt is up (readline then owns the terminal): a Ctrl-D typed
    # while the REPL is between prompts can be lost in the terminal's mode switch.
    child.expect(">>> ")
    child.sendintr()  # at the prompt: clears the line, does not leave
    child.expect("\r\n>>> ")  # the fresh prompt, printed after the interrupt was handled
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
