"""Static checks of deploy/grafana/kiln-dashboard.json (no Grafana server can be installed here)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from tests.deploy.support import (
    DASHBOARD,
    EXTERNAL_METRICS,
    RULES,
    app_metric_names,
    import_or_skip,
    metric_names,
    substitute,
)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def known_metrics() -> set[str]:
    names = {"up"} | set(EXTERNAL_METRICS) | app_metric_names()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        names |= {r["record"] for r in group["rules"] if "record" in r}
    return names


def test_json_matches_its_generator() -> None:
    path = DASHBOARD.with_name("build_dashboard.py")
    spec = importlib.util.spec_from_file_location("build_dashboard", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), "run python deploy/grafana/build_dashboard.py"


def test_structure() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"DS_PROMETHEUS", "namespace"} <= variables
    for p in d["panels"]:
        grid = p["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), p["title"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
    for p in panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]


def test_covers_the_serving_signals() -> None:
    titles = " | ".join(p["title"].lower() for p in panels())
    for needle in (
        "request",
        "error",
        "latency",
        "time to first token",
        "inter-token",
        "tokens/s",
        "queue depth",
        "batch size",
        "kv slot",
        "images/s",
        "triton queue",
        "triton compute",
        "replicas",
    ):
        assert needle in titles, f"no panel for {needle}"
    text = DASHBOARD.read_text()
    for metric in (
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_exec_count",
    ):
        assert metric in text


@pytest.mark.parametrize("title,expr", exprs(), ids=[f"{t}#{i}" for i, (t, _) in enumerate(exprs())])
def test_expression_parses_and_uses_known_metrics(title: str, expr: str) -> None:
    import_or_skip("promql_parser")
    names = metric_names(substitute(expr))  # raises on a parse error
    assert names, expr
    unknown = names - known_metrics()
    assert not unknown, f"{title}: metrics neither exported by the app, recorded, nor listed external: {unknown}"


def test_parser_rejects_broken_promql() -> None:
    promql_parser = import_or_skip("promql_parser")
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(kiln_requests_total[5m])")
