"""The interactive loop of `kiln generate -i` and `kiln chat`: stream each answer, keep history.

Ctrl-C while an answer streams stops that answer (its slot is freed) and returns to the prompt;
Ctrl-C at the prompt clears the line; Ctrl-D or `/quit` leaves. Lines typed are kept in a
readline history file (`KILN_HISTORY`, default ~/.kiln_history).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from cli.textclient import Generation, Sampling

HELP = """commands:
  /reset               forget the conversation and restore the sampling flags given on the command line
  /set NAME VALUE      change a sampling flag: temperature, top_p, top_k, max_tokens, seed, repetition_penalty
  /stop TEXT           add a stop string (\\n for a newline); `/stop` alone clears them
  /show                print the sampling flags in force
  /quit                leave (or Ctrl-D)
Ctrl-C stops an answer while it streams. A line ending in \\ continues on the next line."""

FLAGS = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "max_tokens": ("max_new_tokens", int),
    "seed": ("seed", int),
    "repetition_penalty": ("repetition_penalty", float),
}


def setup_history() -> Callable[[], None]:
    """Load the readline history; returns the function that saves it."""
    try:
        import readline
    except ImportError:  # no readline (e.g. Windows): the REPL works without history
        return lambda: None
    path = Path(os.environ.get("KILN_HISTORY", Path.home() / ".kiln_history"))
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save() -> None:
        try:
            readline.write_history_file(path)
        except OSError:
            pass

    return save


@contextlib.contextmanager
def ctrl_c_interrupts() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt for the session, whatever SIGINT's inherited disposition.

    A process started as a background job of a non-interactive shell (`make test &`, a CI
    runner's script, `nohup sh -c '... &'`) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler: Ctrl-C on the REPL's terminal would do nothing at all, and an
    answer could not be stopped. The REPL's contract is that Ctrl-C stops an answer, so it holds
    Python's own handler while it runs and puts the inherited one back after."""
    if threading.current_thread() is not threading.main_thread():  # signals are the main thread's
        yield
        return
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, inherited)


def stream(generation: Generation, out: TextIO) -> str:
    """Print chunks as they come; Ctrl-C cancels. Returns the text, then a status line."""
    parts: list[str] = []
    try:
        for chunk in generation:
            parts.append(chunk)
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        generation.cancel()
        out.write(" [stopped]")
    out.write("\n")
    out.flush()
    print(f"[{generation.outcome.line()}]", file=sys.stderr, flush=True)
    return "".join(parts)


class Repl:
    """One session. `turn(text, sampling)` starts a generation; `reset()` forgets state."""

    def __init__(
        self,
        sampling: Sampling,
        turn: Callable[[str, Sampling], Generation],
        on_reply: Callable[[str, str], None] | None = None,
        on_reset: Callable[[], None] | None = None,
        prompt: str = ">>> ",
    ) -> None:
        self.initial = sampling
        self.sampling = replace(sampling, stop=list(sampling.stop))
        self.turn = turn
        self.on_reply = on_reply
        self.on_reset = on_reset
        self.prompt = prompt

    def command(self, line: str, out: TextIO) -> bool:
        """Handle a /command; False to leave."""
        name, _, arg = line[1:].partition(" ")
        if name in ("quit", "exit", "q"):
            return False
        if name == "reset":
            self.sampling = replace(self.initial, stop=list(self.initial.stop))
            if self.on_reset:
                self.on_reset()
            print("[reset]", file=out)
        elif name == "set":
            key, _, value = arg.strip().partition(" ")
            if key not in FLAGS or not value:
                print(f"usage: /set NAME VALUE with NAME one of {', '.join(FLAGS)}", file=out)
            else:
                attr, kind = FLAGS[key]
                try:
                    setattr(self.sampling, attr, kind(value))
                    print(f"[{key} = {getattr(self.sampling, attr)}]", file=out)
                except ValueError:
                    print(f"{key}: {value!r} is not a {kind.__name__}", file=out)
        elif name == "stop":
            if arg:
                self.sampling.stop.append(arg.replace("\\n", "\n"))
            else:
                self.sampling.stop.clear()
            print(f"[stop = {self.sampling.stop}]", file=out)
        elif name == "show":
            print(f"[{self.sampling.fields()}]", file=out)
        else:
            print(HELP, file=out)
        return True

    def read(self) -> str:
        lines = [input(self.prompt)]
        while lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            lines.append(input("... "))
        return "\n".join(lines)

    def run(self, out: TextIO = sys.stdout) -> None:
        save = setup_history()
        print("Type /help for commands; Ctrl-C stops an answer, Ctrl-D leaves.", file=out)
        with ctrl_c_interrupts():
            try:
                while True:
                    try:
                        if not self.step(out):
                            return
                    except KeyboardInterrupt:  # between an answer's status line and the next prompt
                        print(file=out)  # as at the prompt: the session goes on
            finally:
                save()

    def step(self, out: TextIO) -> bool:
        """Read one line and act on it; False when the session ends."""
        try:
            text = self.read()
        except KeyboardInterrupt:
            print(file=out)
            return True
        except EOFError:
            print(file=out)
            return False
        if not text.strip():
            return True
        if text.startswith("/"):
            return self.command(text.strip(), out)
        try:
            generation = self.turn(text, self.sampling)
            reply = stream(generation, out)
        except KeyboardInterrupt:
            print(" [stopped]", file=out)
            return True
        except Exception as exc:  # a refused prompt is reported; the session goes on
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return True
        if self.on_reply:
            self.on_reply(text, reply)
        return True
