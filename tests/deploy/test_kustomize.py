"""deploy/k8s renders with kubectl kustomize, validates against Kubernetes schemas, and is wired up."""

from __future__ import annotations

import pytest

from tests.deploy.support import (
    CRD_KINDS,
    KUSTOMIZATIONS,
    by_name,
    import_or_skip,
    kustomize,
    of_kind,
    pod_templates,
    render,
    selects,
)

# The oldest and newest Kubernetes minor this deployment supports (policy/v1, autoscaling/v2, restricted PSA).
K8S_VERSIONS = ("1.30.0", "1.37.0")
NAMES = list(KUSTOMIZATIONS)


@pytest.mark.parametrize("name", NAMES)
def test_renders_without_warnings(name: str) -> None:
    out, err = kustomize(KUSTOMIZATIONS[name])
    assert out.strip(), f"{name} rendered nothing"
    assert "warning" not in err.lower(), f"kustomize warnings for {name}:\n{err}"


def test_overlays_exist() -> None:
    assert {"cpu", "gpu"} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("name", NAMES)
def test_every_object_validates_against_kubernetes_schemas(name: str) -> None:
    kv = import_or_skip("kubernetes_validate")
    problems = []
    for doc in render(name):
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError:
                if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS:
                    problems.append(f"{what}: no schema for {doc['apiVersion']} in Kubernetes {version}")
            except kv.ValidationError as exc:
                problems.append(f"{what} (k8s {version}): {exc.message} at {list(exc.path)}")
    assert not problems, "\n".join(problems)


def test_missing_schema_is_an_error_not_a_warning() -> None:
    """kubernetes-validate's CLI only warns on unknown kinds; the API must raise (a removed PDB version)."""
    kv = import_or_skip("kubernetes_validate")
    old_pdb = {
        "apiVersion": "policy/v1beta1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "x"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}},
    }
    with pytest.raises(kv.SchemaNotFoundError):
        kv.validate(old_pdb, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("name", NAMES)
def test_names_are_unique_and_namespaced(name: str) -> None:
    docs = render(name)
    keys = [(d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys))
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "kiln", f"{d['kind']}/{d['metadata']['name']}"


@pytest.mark.parametrize("name", NAMES)
def test_selectors_match_pod_labels(name: str) -> None:
    docs = render(name)
    workloads = pod_templates(docs)
    pod_labels = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in workloads}
    for w in workloads:
        assert selects(w["spec"]["selector"], pod_labels[w["metadata"]["name"]]), w["metadata"]["name"]
    for svc in of_kind(docs, "Service"):
        matched = [n for n, labels in pod_labels.items() if selects(svc["spec"]["selector"], labels)]
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {matched}"
        workload = by_name(docs, "Deployment", matched[0])
        container_ports = {p["name"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"{svc['metadata']['name']}: {port}"
    for kind in ("PodDisruptionBudget",):
        for obj in of_kind(docs, kind):
            matched = [n for n, labels in pod_labels.items() if selects(obj["spec"]["selector"], labels)]
            assert len(matched) == 1, f"{kind} {obj['metadata']['name']} selects {matched}"
    for np in of_kind(docs, "NetworkPolicy"):
        matched = [n for n, labels in pod_labels.items() if selects(np["spec"]["podSelector"], labels)]
        assert len(matched) == 1, f"NetworkPolicy {np['metadata']['name']} selects {matched}"
        for rule in np["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer:
                    assert any(selects(peer["podSelector"], labels) for labels in pod_labels.values()), peer
    services = of_kind(docs, "Service")
    for sm in of_kind(docs, "ServiceMonitor"):
        matched = [s for s in services if selects(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        assert len(matched) == 1, f"ServiceMonitor {sm['metadata']['name']} selects {len(matched)} Services"
        svc_ports = {p["name"] for p in matched[0]["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            assert ep["port"] in svc_ports, f"ServiceMonitor port {ep['port']} not in {svc_ports}"
    for so in of_kind(docs, "ScaledObject"):
        ref = so["spec"]["scaleTargetRef"]
        target = by_name(docs, ref.get("kind", "Deployment"), ref["name"])
        assert "replicas" not in target["spec"], f"{ref['name']}: KEDA owns replicas; drop spec.replicas"


@pytest.mark.parametrize("name", NAMES)
def test_references_resolve(name: str) -> None:
    """ConfigMaps (with kustomize's hash suffix) and PVCs referenced by pods exist."""
    docs = render(name)
    configmaps = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    claims = {d["metadata"]["name"] for d in of_kind(docs, "PersistentVolumeClaim")}
    for w in pod_templates(docs):
        spec = w["spec"]["template"]["spec"]
        for c in spec["containers"]:
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] in configmaps, src
        for vol in spec.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in claims, vol
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps, vol


def _sleep_seconds(container: dict) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


@pytest.mark.parametrize("name", NAMES)
def test_pods_are_hardened_and_probed(name: str) -> None:
    for w in pod_templates(render(name)):
        what = w["metadata"]["name"]
        spec = w["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, what
        assert spec["securityContext"]["runAsUser"] > 0, what
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", what
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, what
            assert sc["allowPrivilegeEscalation"] is False, what
            assert sc["capabilities"]["drop"] == ["ALL"], what
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{what}: {bound}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{what}: {probe}"
            assert _sleep_seconds(c) > 0, what


def _drain_seconds(docs: list[dict], workload: dict) -> float:
    """KILN_DRAIN_S for the gateway (its ConfigMap), --exit-timeout-secs for Triton."""
    container = workload["spec"]["template"]["spec"]["containers"][0]
    for arg in container.get("args", []):
        if arg.startswith("--exit-timeout-secs="):
            return float(arg.split("=", 1)[1])
    for src in container.get("envFrom", []):
        data = by_name(docs, "ConfigMap", src["configMapRef"]["name"])["data"]
        if "KILN_DRAIN_S" in data:
            return float(data["KILN_DRAIN_S"])
    raise AssertionError(f"no drain period for {workload['metadata']['name']}")


@pytest.mark.parametrize("name", NAMES)
def test_termination_grace_outlasts_prestop_and_drain(name: str) -> None:
    docs = render(name)
    for w in pod_templates(docs):
        spec = w["spec"]["template"]["spec"]
        budget = _sleep_seconds(spec["containers"][0]) + _drain_seconds(docs, w)
        assert spec["terminationGracePeriodSeconds"] > budget, (w["metadata"]["name"], budget)


def test_cpu_overlay_has_no_triton_and_gpu_overlay_has_it() -> None:
    cpu, gpu = render("cpu"), render("gpu")
    assert not [d for d in cpu if "triton" in d["metadata"]["name"]]
    cpu_env = of_kind(cpu, "ConfigMap")[0]["data"]
    assert cpu_env["KILN_BACKEND"] == "onnxruntime"

    triton = by_name(gpu, "Deployment", "kiln-triton")
    container = triton["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models"
    assert "--model-repository=/models" in container["args"]
    gpu_env = of_kind(gpu, "ConfigMap")[0]["data"]
    assert gpu_env["KILN_BACKEND"] == "triton"
    host, port = gpu_env["KILN_TRITON_URL"].rsplit(":", 1)
    svc = by_name(gpu, "Service", host)
    assert int(port) in {p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"}
    assert {so["metadata"]["name"] for so in of_kind(gpu, "ScaledObject")} == {"kiln-gateway", "kiln-triton"}
