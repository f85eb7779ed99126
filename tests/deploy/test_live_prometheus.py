"""A real Prometheus on loopback scrapes a live gateway (a tiny LM and a tiny classifier) under a
little traffic and evaluates every dashboard, rule and KEDA-trigger expression through its HTTP API.

Each expression must parse (HTTP 200, status success). Each must return series, except those that
use only metrics the live gateway cannot export (EXTERNAL_METRICS in support.py: Triton,
kube-state-metrics), which are listed with their reason. Metric names are
checked against the live /metrics. The scrape job is named and labelled like the ServiceMonitor's
(job="kiln-gateway", namespace="kiln"), so expressions run verbatim.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.support import (
    DASHBOARD,
    EXTERNAL_METRICS,
    RULES,
    import_or_skip,
    metric_names,
    of_kind,
    render,
    require_tool,
    substitute,
    value_part,
)
from tests.live_server import Server, free_port

pytestmark = pytest.mark.timeout(180)


def expressions() -> list[tuple[str, str, bool]]:
    """(where, PromQL, must return series) for every dashboard target, rule and KEDA trigger.

    A whole alert expression (`X > threshold`) only returns series while it fires, so on a healthy
    gateway it must parse, and its value part X must return series.
    """
    found = []
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        for t in p.get("targets", []):
            found.append((f"dashboard {p['title']!r} {t['refId']}", substitute(t["expr"]), True))
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                found.append((f"record {rule['record']}", rule["expr"], True))
                found.append((f"recorded series {rule['record']}", rule["record"], True))
            else:
                found.append((f"alert {rule['alert']}", rule["expr"], False))
                found.append((f"alert {rule['alert']} value", value_part(rule["expr"]), True))
    for so in of_kind(render("gpu"), "ScaledObject"):
        for trig in so["spec"]["triggers"]:
            found.append((f"ScaledObject {so['metadata']['name']} {trig['name']}", trig["metadata"]["query"], True))
    return found


def _classify_traffic(server: Server) -> None:
    """Classifications over REST and gRPC, enough for the drift window to export its gauges."""
    import grpc

    from service.rpc import kiln_v1_pb2 as pb
    from service.rpc import kiln_v1_pb2_grpc as pb_grpc
    from tests.service.vision.images import scene_png

    files = [("file", (f"{i}.png", scene_png(i), "image/png")) for i in range(4)]
    r = httpx.post(f"{server.url}/classify?prediction_set=true", files=files, timeout=60)
    assert r.status_code == 200, r.text
    with grpc.insecure_channel(server.grpc_target) as channel:
        pb_grpc.KilnStub(channel).Classify(pb.ClassifyRequest(images=[scene_png(9)], tta_flip=True), timeout=30)


def _traffic(server: Server) -> None:
    """Plain, streaming, OpenAI, gRPC, invalid and over-capacity (429) requests; classifications."""
    import grpc

    from service.rpc import kiln_v1_pb2 as pb
    from service.rpc import kiln_v1_pb2_grpc as pb_grpc

    url = server.url
    _classify_traffic(server)
    with httpx.Client(timeout=60) as client:
        for i in range(3):
            r = client.post(f"{url}/generate", json={"prompt": "def fib(n):", "max_new_tokens": 4, "seed": i})
            assert r.status_code == 200, r.text
        with client.stream(
            "POST", f"{url}/generate", json={"prompt": "class", "max_new_tokens": 4, "stream": True}
        ) as r:
            assert r.status_code == 200
            r.read()
        r = client.post(f"{url}/v1/completions", json={"model": "tiny-lm", "prompt": "import os", "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert client.post(f"{url}/generate", json={"prompt": ""}).status_code == 400
        with grpc.insecure_channel(server.grpc_target) as channel:
            pb_grpc.KilnStub(channel).Generate(pb.GenerateRequest(prompt="for i in", max_new_tokens=4), timeout=30)

    statuses: list[int] = []

    def burst() -> None:
        body = {"prompt": "import sys", "max_new_tokens": 12, "ignore_eos": True}
        statuses.append(httpx.post(f"{url}/generate", json=body, timeout=60).status_code)

    threads = [threading.Thread(target=burst) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 200 in statuses and 429 in statuses, statuses


class Prometheus:
    def __init__(self, tmp: Path, target: str) -> None:
        binary = require_tool("prometheus")
        self.url = f"http://127.0.0.1:{free_port()}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "kiln-gateway",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [target], "labels": {"namespace": "kiln"}}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (tmp / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                f"--storage.tsdb.path={tmp / 'data'}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait_for(lambda: httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200, 20, "ready")

    def wait_for(self, check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited: {Path(self.log.name).read_text()}"
            try:
                if check():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"prometheus not {what} in {timeout}s")

    def query(self, expr: str) -> httpx.Response:
        return httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)

    def series(self, expr: str) -> list:
        r = self.query(expr)
        return r.json()["data"]["result"] if r.status_code == 200 else []

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def live(tiny_lm_vision_repo: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import_or_skip("promql_parser")
    require_tool("prometheus")
    # Small capacity and a slow engine step so the burst queues and overflows (429 queue_full); a
    # drift window that exports its gauges after a few images.
    server = Server(
        tiny_lm_vision_repo,
        KILN_MAX_BATCH="2",
        KILN_MAX_QUEUE="1",
        KILN_FAULT_STEP_DELAY_MS="15",
        KILN_CLASSIFY_DRIFT_MIN_IMAGES="1",
        KILN_CLASSIFY_DRIFT_PERIOD_S="0",
    )
    prom = None
    try:
        prom = Prometheus(tmp_path_factory.mktemp("prometheus"), server.url.removeprefix("http://"))
        prom.wait_for(lambda: prom.series('up{job="kiln-gateway"} == 1'), 20, "scraping the gateway")
        _traffic(server)
        scraped = server.metric("kiln_generation_tokens_total")
        # Two scrapes after the traffic (rates need two samples), then recording rules evaluated on them.
        prom.wait_for(lambda: _tokens_seen(prom) >= scraped, 20, "seeing the traffic")
        time.sleep(2.5)
        yield server, prom
    finally:
        if prom is not None:
            prom.stop()
        server.stop()


def _tokens_seen(prom: Prometheus) -> float:
    result = prom.series('sum(kiln_generation_tokens_total{job="kiln-gateway"})')
    return float(result[0]["value"][1]) if result else -1.0


def _live_metric_names(server: Server) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_rules_loaded_and_healthy(live) -> None:  # type: ignore[no-untyped-def]
    _, prom = live
    groups = httpx.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    expected = sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    assert len(rules) == expected
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad


def test_every_expression_parses_and_returns_series(live) -> None:  # type: ignore[no-untyped-def]
    server, prom = live
    live_names = _live_metric_names(server)
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
    failures, skipped, checked = [], [], 0
    for where, expr, must_return_series in expressions():
        response = prom.query(expr)
        if response.status_code != 200 or response.json().get("status") != "success":
            failures.append(f"{where}: Prometheus rejected {expr!r}: {response.text[:300]}")
            continue
        names = metric_names(expr)
        external = names & set(EXTERNAL_METRICS)
        if external:
            skipped.append(f"{where}: {', '.join(sorted({EXTERNAL_METRICS[n] for n in external}))}")
            continue
        missing = names - live_names - recorded - {"up"}
        if missing:
            failures.append(f"{where}: metrics not in the live /metrics: {sorted(missing)}")
            continue
        if must_return_series and not response.json()["data"]["result"]:
            failures.append(f"{where}: no series for {expr!r}")
        checked += 1
    print(f"\n{checked} expressions returned series; skipped {len(skipped)}:\n  " + "\n  ".join(skipped))
    assert not failures, "\n".join(failures)
    assert checked >= 30


def test_skips_are_only_for_missing_metrics(live) -> None:  # type: ignore[no-untyped-def]
    """The skip list stays honest: nothing on it is exported by the live gateway."""
    server, _ = live
    exported = _live_metric_names(server) & set(EXTERNAL_METRICS)
    assert not exported, f"now exported, remove from EXTERNAL_METRICS: {exported}"


def test_prometheus_rejects_a_broken_expression(live) -> None:  # type: ignore[no-untyped-def]
    _, prom = live
    assert prom.query("sum(rate(kiln_requests_total[5m])").status_code == 400
