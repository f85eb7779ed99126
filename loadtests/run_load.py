"""`make loadtest`: start Kiln locally, drive it with locust (steady, ramp, spike), sample the
server's memory, check thresholds, and write CSV + HTML per scenario and `docs/load.md`.

Exits non-zero when a threshold fails: error rate (429 shedding excluded: it is the intended
answer past capacity), p99 latency, TTFT p99, peak RSS, or requests left stuck in the engine.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live_server import Server  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class KilnProcess:
    """A `kiln serve` subprocess (tests/live_server.Server) whose memory is sampled while it runs."""

    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.server = Server(repo, ready_timeout=120, capture_output=False, **env)
        self.url, self.grpc_port, self.proc = self.server.url, self.server.grpc_port, self.server.proc
        self.peak_rss = rss_mb(self.proc.pid)
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while self._sampling and self.proc.poll() is None:
            self.peak_rss = max(self.peak_rss, rss_mb(self.proc.pid))
            time.sleep(0.25)

    def metric(self, name: str) -> float:
        try:
            return self.server.metric(name)
        except KeyError:  # a labelled metric nobody has touched yet
            return 0.0

    def stop(self) -> None:
        self._sampling = False
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def read_stats(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(f"{prefix}_stats.csv") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


def run_scenario(name: str, args: argparse.Namespace, out_dir: Path) -> dict:
    kiln = KilnProcess(
        Path(args.repository), {"KILN_MAX_BATCH": str(args.max_batch), "KILN_MAX_QUEUE": str(args.max_queue)}
    )
    try:
        prefix = out_dir / name
        env = {
            **os.environ,
            "KILN_LOAD_SHAPE": name,
            "KILN_LOAD_USERS": str(args.users),
            "KILN_LOAD_SECONDS": str(args.seconds),
            "KILN_LOAD_GRPC": f"127.0.0.1:{kiln.grpc_port}",
            "KILN_LOAD_MODEL": args.model,
            "KILN_LOAD_CLASSIFIER": args.classifier,
            "PYTHONPATH": str(ROOT),
        }
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "loadtests/locustfile.py"),
            "--headless",
            "--host",
            kiln.url,
            "--csv",
            str(prefix),
            "--html",
            f"{prefix}.html",
            "--only-summary",
            "--stop-timeout",
            "60",
            "--exit-code-on-error",
            "0",
        ]
        subprocess.run(cmd, env=env, check=True, cwd=ROOT, timeout=args.seconds + 180)
        time.sleep(0.5)
        stuck = kiln.metric("kiln_kv_slots_in_use") + kiln.metric("kiln_queue_depth")
        peak = kiln.peak_rss
    finally:
        kiln.stop()
    stats = read_stats(prefix)
    total = stats[("", "Aggregated")]
    shed = sum(int(r["Request Count"]) for (t, _), r in stats.items() if t == "SHED")
    real = {k: r for k, r in stats.items() if k[0] not in ("SHED", "TTFT", "STREAM", "")}
    timed = {k: r for k, r in stats.items() if k[0] not in ("SHED", "TTFT", "")}
    requests = sum(int(r["Request Count"]) for r in real.values())
    failures = sum(int(r["Failure Count"]) for r in real.values())
    p99 = max((float(r["99%"]) for r in timed.values() if r["99%"] not in ("N/A", "")), default=0.0)
    ttft = stats.get(("TTFT", "/generate [stream]"), {})
    result = {
        "scenario": name,
        "requests": requests,
        "shed_429": shed,
        "failures": failures,
        "error_rate": failures / max(requests, 1),
        "rps": float(total["Requests/s"]),
        "p99_ms": p99,
        "ttft_p50_ms": float(ttft.get("50%", 0) or 0),
        "ttft_p99_ms": float(ttft.get("99%", 0) or 0),
        "peak_rss_mb": peak,
        "stuck_after": stuck,
        "rows": timed,
    }
    checks = {
        "error rate": result["error_rate"] <= args.max_error_rate,
        "p99 latency": p99 <= args.max_p99_ms,
        "TTFT p99": result["ttft_p99_ms"] <= args.max_ttft_p99_ms,
        "peak RSS": peak <= args.max_rss_mb,
        "nothing stuck": stuck == 0,
    }
    if name == "spike" and 4 * args.users > args.max_batch + args.max_queue:
        checks["sheds past capacity (429)"] = shed > 0
    result["checks"] = checks
    return result


def write_doc(results: list[dict], args: argparse.Namespace, path: Path) -> str:
    lines = [
        "# Load test results",
        "",
        f"Generated by `make loadtest` (`loadtests/run_load.py`) on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()} with {os.cpu_count()} CPUs, Python {platform.python_version()}. Model `{args.model}`, "
        f"KILN_MAX_BATCH={args.max_batch}, KILN_MAX_QUEUE={args.max_queue}, {args.seconds:.0f} s per scenario, "
        f"peak {args.users} users (spike: {4 * args.users}). Mix: REST `/generate` (plain and SSE), "
        f"`/classify` ({args.classifier or 'off'}; single and multi-view), "
        "OpenAI `/v1/completions`, gRPC `GenerateStream`. Numbers come from the run; CSV and HTML reports are in "
        f"`{args.out_dir}/`.",
        "",
        f"Thresholds: error rate ≤ {args.max_error_rate:.1%} (429 shedding excluded), "
        f"p99 ≤ {args.max_p99_ms:.0f} ms, TTFT p99 ≤ {args.max_ttft_p99_ms:.0f} ms, "
        f"peak RSS ≤ {args.max_rss_mb:.0f} MB, no sequence left in the engine; the spike must shed with 429.",
        "",
        "| scenario | requests | shed (429) | failures | req/s | p99 ms | TTFT p50 / p99 ms | peak RSS MB | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        verdict = (
            "pass" if all(r["checks"].values()) else "FAIL: " + ", ".join(k for k, ok in r["checks"].items() if not ok)
        )
        lines.append(
            f"| {r['scenario']} | {r['requests']} | {r['shed_429']} | {r['failures']} | {r['rps']:.1f} | "
            f"{r['p99_ms']:.0f} | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {verdict} |"
        )
    lines.append("")
    for r in results:
        held = "held" if all(r["checks"].values()) else "did not hold"
        lines.append(
            f"- **{r['scenario']}**: the load {held}; {r['requests']} requests were accepted and "
            f"{r['requests'] - r['failures']} completed, {r['shed_429']} were shed with 429 + Retry-After, "
            f"peak server RSS {r['peak_rss_mb']:.0f} MB, {r['stuck_after']:.0f} left in the engine afterwards."
        )
    lines += ["", "Per endpoint (p50 / p99 ms):", ""]
    for r in results:
        parts = [f"{t} {n}: {row['50%']} / {row['99%']} ({row['Request Count']})" for (t, n), row in r["rows"].items()]
        lines.append(f"- **{r['scenario']}**: " + "; ".join(parts))
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repository", default=str(ROOT / "model_repository"))
    p.add_argument("--model", default="demo-lm")
    p.add_argument("--classifier", default="", help="classifier for /classify traffic (empty: none)")
    p.add_argument("--scenarios", default="steady,ramp,spike")
    p.add_argument("--seconds", type=float, default=45)
    p.add_argument("--users", type=int, default=12)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=16)
    p.add_argument("--out-dir", default="runs/load")
    p.add_argument("--doc", default="docs/load.md")
    p.add_argument("--max-error-rate", type=float, default=0.01)
    p.add_argument("--max-p99-ms", type=float, default=20000)
    p.add_argument("--max-ttft-p99-ms", type=float, default=10000)
    p.add_argument("--max-rss-mb", type=float, default=1500)
    args = p.parse_args()
    out_dir = ROOT / args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [run_scenario(name, args, out_dir) for name in args.scenarios.split(",")]
    print(write_doc(results, args, ROOT / args.doc))
    return 0 if all(all(r["checks"].values()) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
