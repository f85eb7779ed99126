"""`kiln generate` and `kiln chat`: text from a model repository in this process, or from a server.

kiln generate "def fib(n):"                         # in-process, the repository's text model
kiln generate --url http://localhost:8000 "import os"
kiln generate -i --temperature 0.8                  # a REPL (see cli/repl.py)
kiln chat --url http://localhost:8000               # /v1/chat/completions, with history
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli.repl import Repl, stream
from cli.textclient import LocalText, RemoteText, Sampling, TextSource


def add_source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", default="model_repository", help="model repository (in-process)")
    p.add_argument("--model", help="model name (default: the only text model)")
    p.add_argument("--url", help="a Kiln server instead of loading the model here, e.g. http://localhost:8000")
    p.add_argument("--api-key", default=os.environ.get("KILN_API_KEY"), help="with --url (default $KILN_API_KEY)")
    p.add_argument("--variant", help="in-process: the LM graph to run (fused, fp32, optimized, int8)")
    p.add_argument("--max-tokens", type=int, dest="max_new_tokens", help="tokens to generate (model default 64)")
    p.add_argument("--temperature", type=float, help="0 = greedy (the model default)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int, help="same seed, same sample")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable; \\n for a newline)")
    p.add_argument("-i", "--interactive", action="store_true", help="a REPL: one prompt per line")


def sampling_of(args: argparse.Namespace) -> Sampling:
    return Sampling(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=[s.replace("\\n", "\n") for s in args.stop],
    )


def open_source(args: argparse.Namespace) -> TextSource:
    if args.url:
        return RemoteText(args.url, args.model, args.api_key)
    return LocalText(Path(args.repository), args.model, args.variant)


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is None or args.prompt == "-":
        if sys.stdin.isatty():
            raise ValueError("give a prompt (or `-` to read it from standard input), or use --interactive")
        return sys.stdin.read()
    return str(args.prompt)


def cmd_generate(args: argparse.Namespace) -> None:
    source = open_source(args)
    try:
        sampling = sampling_of(args)
        if args.interactive:
            print(f"kiln generate: {source.name}", file=sys.stderr)
            Repl(sampling, source.generate).run()
            return
        prompt = read_prompt(args)
        sys.stdout.write(prompt)
        stream(source.generate(prompt, sampling), sys.stdout)
    finally:
        source.close()


def cmd_chat(args: argparse.Namespace) -> None:
    source = open_source(args)
    history: list[dict[str, str]] = []
    system = [{"role": "system", "content": args.system}] if args.system else []

    def turn(text: str, sampling: Sampling):  # type: ignore[no-untyped-def]
        return source.chat([*system, *history, {"role": "user", "content": text}], sampling)

    def remember(user: str, reply: str) -> None:
        history.extend([{"role": "user", "content": user}, {"role": "assistant", "content": reply}])

    try:
        sampling = sampling_of(args)
        if args.interactive or args.message is None:
            print(f"kiln chat: {source.name}", file=sys.stderr)
            Repl(sampling, turn, on_reply=remember, on_reset=history.clear, prompt="you> ").run()
            return
        stream(turn(args.message, sampling), sys.stdout)
    finally:
        source.close()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text in-process from a model repository, or from a server (--url)")
    p.add_argument("prompt", nargs="?", help="the prompt (`-`: standard input)")
    add_source_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat over the model's chat template (a REPL unless a message is given)")
    p.add_argument("message", nargs="?", help="one message, answered once (default: a REPL)")
    p.add_argument("--system", help="a system message")
    add_source_flags(p)
    p.set_defaults(func=cmd_chat)
