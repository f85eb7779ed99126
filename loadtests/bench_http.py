"""The HTTP cases of the generation benchmark, kept beside `bench_generate.py`.

  kiln-http        `kiln serve` (a real subprocess) with N streaming clients on /generate (SSE)
  kiln-http-int4   the same on the `int4` fused graph (KILN_LM_VARIANT=int4)

and the server's py-spy profile: after the timed rounds, the largest client count runs once
more while py-spy samples the server's Python threads (out of process, `--nonblocking`, so the
server is never paused). The summary says where the server's Python time goes per streamed
token: the event-loop thread (routes, SSE, the data plane), the engine thread (batching,
sampling, detokenization) and the rest — the cost issue 14 asks to keep small next to a step.

The clients are loadtests/sse_client.py on uvloop, in the benchmark's process: they share the 2
cores with the server (their CPU per token is reported), and httpx's client took about 2.5 times
as much.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PYSPY_RATE = 250  # samples per second per thread
# The profiled run repeats until this long: a smoke run's 16 tokens took ~30 ms, a handful of samples,
# and the event loop was sometimes in none of them.
PROFILE_MIN_S = 2.0
ENGINE_THREAD = "kiln-engine-"


def _server(model: dict, clients: list[int], threads: int, env: dict[str, str]):  # type: ignore[no-untyped-def]
    from tests.live_server import Server

    return Server(
        Path(model["kiln_repo"]),
        capture_output=False,
        KILN_INTRA_OP_THREADS=str(threads),
        KILN_MAX_BATCH=str(max(max(clients), 8)),
        KILN_GRPC_PORT="0",
        OMP_NUM_THREADS=str(threads),
        KILN_PREFIX_CACHE="false",  # the same work per token as the peers (bench_generate.SAME_WORK)
        KILN_SPECULATIVE="off",
        **env,
    )


def _run(coro):  # type: ignore[no-untyped-def]
    """The clients' event loop: uvloop (the server's own, installed with uvicorn[standard]), for
    the same reason as sse_client: less of the shared cores spent by the load generator."""
    import uvloop

    return uvloop.run(coro)


async def _stream(url: str, prompts: list[dict], n: int, n_new: int) -> dict:
    """n concurrent streaming clients; every token's arrival time and id per client."""
    from sse_client import sse_post

    async def one(prompt: dict, t0: float) -> dict:
        body = {"prompt": prompt["text"], "max_new_tokens": n_new, "temperature": 0, "ignore_eos": True, "stream": True}
        seq: dict = {"submit": time.perf_counter() - t0, "times": [], "ids": [], "completion_tokens": 0}
        async for name, data in sse_post(url, "/generate", body):
            if name == "finish":
                usage = json.loads(data)["usage"]
                seq["completion_tokens"], seq["prompt_tokens"] = usage["completion_tokens"], usage["prompt_tokens"]
            elif name == "error":
                raise RuntimeError(f"the stream failed: {data[:300]!r}")
            elif data.startswith(b"{"):
                token = json.loads(data).get("token", -1)
                if token >= 0:
                    seq["times"].append(time.perf_counter() - t0)
                    seq["ids"].append(token)
        return seq

    cpu, t0 = time.process_time(), time.perf_counter()
    seqs = await asyncio.gather(*(one(prompts[i % len(prompts)], t0) for i in range(n)))
    return {"batch": n, "seqs": list(seqs), "client_cpu_s": time.process_time() - cpu}


def worker_http(
    model: dict, prompts: list[dict], clients: list[int], new: int, threads: int, env: dict[str, str] | None = None
) -> dict:
    server = _server(model, clients, threads, env or {})
    try:
        _run(_stream(server.url, prompts, 1, 4))  # warm-up
        results = [_run(_stream(server.url, prompts, n, new)) for n in clients]
    finally:
        server.stop()
    return {"runs": results}


def worker_http_int4(model: dict, prompts: list[dict], clients: list[int], new: int, threads: int) -> dict:
    """The server on the int4 export that bench_quant.prepare made (`kiln_quant_model`)."""
    repo = str(Path(model["kiln_quant_model"]).parent)
    return worker_http({**model, "kiln_repo": repo}, prompts, clients, new, threads, {"KILN_LM_VARIANT": "int4"})


def worker_http_profile(model: dict, prompts: list[dict], clients: list[int], new: int, threads: int) -> dict:
    """The largest client count under py-spy (after a warm-up), for PROFILE_MIN_S at least; the summary."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        return {"skipped": "py-spy is not installed (`pip install -e '.[bench]'`)"}
    n = max(clients)
    server = _server(model, clients, threads, {})
    spool = tempfile.TemporaryDirectory(prefix="kiln-pyspy-")
    out = Path(spool.name) / "pyspy.txt"
    try:
        _run(_stream(server.url, prompts, 1, 4))
        cmd = [py_spy, "record", "--pid", str(server.proc.pid), "--rate", str(PYSPY_RATE), "--threads"]
        cmd += ["--nonblocking", "--format", "raw", "--output", str(out)]
        spy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        attached = _await_sampling(spy, timeout=30)
        t0, seqs = time.perf_counter(), []
        while not seqs or time.perf_counter() - t0 < PROFILE_MIN_S:
            seqs += _run(_stream(server.url, prompts, n, new))["seqs"]
        wall = time.perf_counter() - t0
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
    finally:
        server.stop()
    with spool:
        if not out.exists() or not attached:
            return {"skipped": f"py-spy attached: {attached}, wrote: {out.exists()}: {err[-500:]}"}
        raw = out.read_text()
    tokens = sum(len(s["ids"]) for s in seqs)
    return {"clients": n, "tokens": tokens, "wall_s": wall, **summarize_pyspy(raw, tokens)}


def _await_sampling(spy: subprocess.Popen, timeout: float) -> bool:
    """Whether py-spy said (on stdout) it is sampling within `timeout` s. A fixed sleep was a race: on a
    loaded machine py-spy attached after a short run had ended and the profile had no event loop in it.
    Reads the raw fd: a buffered readline could hold a second line where select cannot see it."""
    deadline, seen, fd = time.monotonic() + timeout, b"", spy.stdout.fileno()  # type: ignore[union-attr]
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0 and sel.select(left):
            chunk = os.read(fd, 4096)
            if not chunk:
                return False  # py-spy exited
            seen += chunk
            if b"Sampling process" in seen:
                return True
    return False


def summarize_pyspy(raw: str, tokens: int) -> dict:
    """Per-thread busy time per streamed token, and the functions it goes to (py-spy raw lines:
    `thread (id): name;frame;...;leaf count`, idle samples excluded by py-spy)."""
    per_thread: dict[str, int] = defaultdict(int)
    leaf: dict[tuple[str, str], int] = defaultdict(int)
    kiln: dict[tuple[str, str], int] = defaultdict(int)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        role = thread_role(frames[0])
        per_thread[role] += int(count)
        leaf[(role, _function(frames[-1]))] += int(count)
        for frame in dict.fromkeys(_function(f) for f in frames[1:] if "service/" in f or "contracts/" in f):
            kiln[(role, frame)] += int(count)
    us = 1e6 / PYSPY_RATE / max(tokens, 1)  # one sample ≈ 1/rate s of one thread's time
    top = sorted(leaf.items(), key=lambda kv: -kv[1])[:10]
    top_kiln = sorted(kiln.items(), key=lambda kv: -kv[1])[:10]
    return {
        "us_per_token": {role: n * us for role, n in sorted(per_thread.items(), key=lambda kv: -kv[1])},
        "self": [(role, fn, n * us) for (role, fn), n in top],
        "kiln_inclusive": [(role, fn, n * us) for (role, fn), n in top_kiln],
    }


def thread_role(head: str) -> str:
    """`thread (123): MainThread` -> "event loop"; the engine thread; anything else by name."""
    name = head.split(": ", 1)[-1]
    if name == "MainThread":
        return "event loop"
    if name.startswith(ENGINE_THREAD):
        return "engine"
    return name.split("-")[0] or "other"


def _function(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (file.py)`: lines of one function counted together."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})" if where else name


def render_pyspy(prof: dict, step_ms: float | None) -> list[str]:
    if "skipped" in prof:
        return [f"**HTTP server profile**: skipped ({prof['skipped']}).", ""]
    threads = ", ".join(f"{role} {us:.0f} µs" for role, us in prof["us_per_token"].items())
    share = ""
    if step_ms:
        loop = prof["us_per_token"].get("event loop", 0.0)
        share = (
            f" The event loop's share per token is {loop / 1000 / step_ms:.1%} of a batch-1 decode step"
            f" ({step_ms:.2f} ms)."
        )
    lines = [
        f"**HTTP server profile** (py-spy {PYSPY_RATE} Hz, non-blocking, {prof['clients']} streaming clients, "
        f"{prof['tokens']} tokens in {prof['wall_s']:.1f} s): Python busy time per streamed token by thread: "
        f"{threads}.{share}",
        "",
        "| thread | function (self time) | µs per token |",
        "|---|---|---:|",
    ]
    lines += [f"| {role} | `{fn}` | {us:.1f} |" for role, fn, us in prof["self"]]
    lines += ["", "| thread | Kiln function (inclusive) | µs per token |", "|---|---|---:|"]
    lines += [f"| {role} | `{fn}` | {us:.1f} |" for role, fn, us in prof["kiln_inclusive"]]
    return [*lines, ""]
