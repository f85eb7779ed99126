"""ScaledObjects and ServiceMonitors validate against the CRD schemas in deploy/k8s/crds/.

The schemas are minimal hand-written CRDs (see deploy/k8s/crds/README.md). They are applied the way the
API server applies a structural schema under kubectl's default strict field validation: unknown fields
are errors, and types, required fields, enums and patterns are enforced.
"""

from __future__ import annotations

import copy
import functools

import pytest
import yaml

from tests.deploy.support import (
    EXTERNAL_METRICS,
    K8S,
    KUSTOMIZATIONS,
    app_metric_names,
    import_or_skip,
    metric_names,
    of_kind,
    render,
)

CRD_DIR = K8S / "crds"


def to_json_schema(node):  # type: ignore[no-untyped-def]
    """OpenAPI v3 (structural) -> JSON Schema: closes objects, maps int-or-string."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "format"}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@functools.cache
def validators() -> dict:
    jsonschema = import_or_skip("jsonschema")
    found = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition", path
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = to_json_schema(version["schema"]["openAPIV3Schema"])
            jsonschema.Draft7Validator.check_schema(schema)
            found[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return found


def errors(doc: dict) -> list[str]:
    validator = validators()[(doc["apiVersion"], doc["kind"])]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def custom_resources() -> list[tuple[str, dict]]:
    return [
        (name, d) for name in KUSTOMIZATIONS for d in render(name) if d["kind"] in ("ScaledObject", "ServiceMonitor")
    ]


def test_every_custom_resource_has_a_schema() -> None:
    for name, doc in custom_resources():
        assert (doc["apiVersion"], doc["kind"]) in validators(), f"{name}: {doc['apiVersion']} {doc['kind']}"


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_custom_resources_validate(kustomization: str) -> None:
    docs = [d for d in render(kustomization) if d["kind"] in ("ScaledObject", "ServiceMonitor")]
    assert docs
    problems = [f"{d['kind']}/{d['metadata']['name']}: {e}" for d in docs for e in errors(d)]
    assert not problems, "\n".join(problems)


def _scaledobject() -> dict:
    return copy.deepcopy(of_kind(render("base"), "ScaledObject")[0])


def _servicemonitor() -> dict:
    return copy.deepcopy(of_kind(render("base"), "ServiceMonitor")[0])


def _break_so(so: dict, how: str) -> None:
    spec = so["spec"]
    if how == "no-target":
        del spec["scaleTargetRef"]
    elif how == "string-replicas":
        spec["minReplicaCount"] = "one"
    elif how == "trigger-without-type":
        del spec["triggers"][0]["type"]
    elif how == "non-string-metadata":
        spec["triggers"][0]["metadata"]["threshold"] = 2
    elif how == "unknown-field":
        spec["maxReplicas"] = 3
    elif how == "bad-policy":
        spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["policies"][0]["type"] = "Pod"


@pytest.mark.parametrize(
    "how",
    ["no-target", "string-replicas", "trigger-without-type", "non-string-metadata", "unknown-field", "bad-policy"],
)
def test_scaledobject_schema_rejects_broken_objects(how: str) -> None:
    so = _scaledobject()
    _break_so(so, how)
    assert errors(so), f"schema accepted a ScaledObject with {how}"


@pytest.mark.parametrize("how", ["no-selector", "bad-interval", "bad-scheme", "unknown-field"])
def test_servicemonitor_schema_rejects_broken_objects(how: str) -> None:
    sm = _servicemonitor()
    if how == "no-selector":
        del sm["spec"]["selector"]
    elif how == "bad-interval":
        sm["spec"]["endpoints"][0]["interval"] = "15 seconds"
    elif how == "bad-scheme":
        sm["spec"]["endpoints"][0]["scheme"] = "grpc"
    else:
        sm["spec"]["endpoints"][0]["metricsPath"] = "/metrics"
    assert errors(sm), f"schema accepted a ServiceMonitor with {how}"


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_prometheus_triggers(kustomization: str) -> None:
    """KEDA types trigger metadata as map[string]string, so check the prometheus scaler's keys here."""
    import_or_skip("promql_parser")
    known = app_metric_names() | set(EXTERNAL_METRICS)
    for so in of_kind(render(kustomization), "ScaledObject"):
        spec = so["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], so["metadata"]["name"]
        assert spec["cooldownPeriod"] > 0 and spec["pollingInterval"] > 0
        prom = [t for t in spec["triggers"] if t["type"] == "prometheus"]
        assert prom and len(prom) == len(spec["triggers"]), "scale on Prometheus signals, not CPU"
        for trig in prom:
            meta = trig["metadata"]
            assert {"serverAddress", "query", "threshold"} <= set(meta), meta
            assert meta["serverAddress"].startswith("http")
            assert float(meta["threshold"]) > 0
            assert trig.get("metricType", "AverageValue") == "AverageValue", "threshold is per pod"
            names = metric_names(meta["query"])
            assert names and names <= known, f"unknown metrics in {meta['query']}: {names - known}"
