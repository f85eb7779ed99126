"""promtool checks the rules and runs their unit tests; every alert has a firing and a quiet case."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.support import RULE_TESTS, RULES, import_or_skip, metric_names, require_tool


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules() -> None:
    proc = _run("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_test_rules() -> None:
    proc = _run("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts - fires == set(), f"alerts never shown firing: {alerts - fires}"
    assert alerts - quiet == set(), f"alerts never shown quiet: {alerts - quiet}"
    required = {"KilnHighErrorRate", "KilnHighP99Latency", "KilnHighTimeToFirstToken", "KilnQueueSaturated"}
    assert required <= alerts
    assert any("NotReady" in a for a in alerts)


def test_alerts_are_documented_and_labelled() -> None:
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
            assert rule.get("for"), f"{rule['alert']}: alerts need a `for` to ride out blips"


def test_recording_rule_names_follow_convention() -> None:
    import_or_skip("promql_parser")
    for rule in _rules():
        if "record" in rule:
            level, metric, operation = rule["record"].split(":")
            assert level == "kiln" and metric and operation, rule["record"]
            assert metric_names(rule["expr"]), rule["record"]
