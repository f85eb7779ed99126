"""Every port, probe path and KILN_* setting named in the manifests and images exists in the app."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.deploy.support import KUSTOMIZATIONS, ROOT, by_name, of_kind, render

# Gateway settings that only exist once parallel work lands (Triton backend). Until Settings knows them,
# their keys/values are tolerated; as soon as they exist they are validated like every other key.
PENDING_SETTINGS = {
    "KILN_BACKEND": ("triton", "the Triton backend (KILN_BACKEND=triton) is being added on the triton branch"),
    "KILN_TRITON_URL": (None, "the Triton backend's endpoint setting is being added on the triton branch"),
}

# Triton's HTTP endpoints (KServe v2 protocol) and its metrics endpoint.
TRITON_HTTP_PATHS = {"/v2/health/ready", "/v2/health/live"}
TRITON_METRICS_PATH = "/metrics"


@pytest.fixture(scope="module")
def app_routes() -> set[str]:
    """GET paths the real app answers (not 404/405). No lifespan: nothing loads, /readyz answers 503."""
    app = create_app(Settings(grpc_port=0))
    client = TestClient(app)
    documented = set(app.openapi()["paths"])
    answered = {path for path in documented if client.get(path).status_code not in (404, 405)}
    assert client.get("/no-such-route").status_code == 404
    return answered


def _gateway(name: str) -> tuple[dict, dict, dict]:
    docs = render(name)
    deployment = by_name(docs, "Deployment", "kiln-gateway")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    (cm_ref,) = container["envFrom"]
    env = by_name(docs, "ConfigMap", cm_ref["configMapRef"]["name"])["data"]
    return docs, container, env


def _settings_from(env: dict) -> tuple[Settings, list[str]]:
    fields = {f"KILN_{name.upper()}" for name in Settings.model_fields}
    usable, pending = {}, []
    for key, value in env.items():
        assert key.startswith("KILN_"), key
        if key in PENDING_SETTINGS:
            expected, _ = PENDING_SETTINGS[key]
            if key not in fields or (expected is not None and value == expected):
                try:
                    Settings(**{key[5:].lower(): value})
                except Exception:
                    pending.append(key)
                    continue
                if key not in fields:
                    pending.append(key)
                    continue
        assert key in fields, f"{key} is not a Kiln setting (service/settings.py)"
        usable[key[5:].lower()] = value
    return Settings(**usable), pending


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_configmap_keys_are_settings(name: str) -> None:
    _, _, env = _gateway(name)
    settings, pending = _settings_from(env)  # raises if a value does not validate
    assert str(settings.model_repository) == "/models"
    for key in pending:
        reason = PENDING_SETTINGS[key][1]
        print(f"{name}: {key}={env[key]} tolerated: {reason}")


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_gateway_ports_match_settings(name: str) -> None:
    docs, container, env = _gateway(name)
    settings, _ = _settings_from(env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port, "grpc": settings.grpc_port}
    # Defaults too: the image runs without the ConfigMap (HEALTHCHECK, docker run).
    assert ports == {"http": Settings.model_fields["port"].default, "grpc": Settings.model_fields["grpc_port"].default}
    np = by_name(docs, "NetworkPolicy", "kiln-gateway")
    allowed = {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == set(ports.values())


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_gateway_probe_and_scrape_paths_exist(name: str, app_routes: set[str]) -> None:
    docs, container, _ = _gateway(name)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in app_routes, f"{probe} {get['path']}"
        assert get["port"] == "http"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sm = by_name(docs, "ServiceMonitor", "kiln-gateway")
    svc = by_name(docs, "Service", "kiln-gateway")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["path"] in app_routes
        assert svc_ports[ep["port"]]["targetPort"] == "http", "the gateway serves /metrics on its HTTP port"


def test_triton_ports_and_paths_match_its_args() -> None:
    docs = render("gpu")
    container = by_name(docs, "Deployment", "kiln-triton")["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.lstrip("-").split("=", 1) for a in container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "http": int(args["http-port"]),
        "grpc": int(args["grpc-port"]),
        "metrics": int(args["metrics-port"]),
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in TRITON_HTTP_PATHS
        assert container[probe]["httpGet"]["port"] == "http"
    sm = by_name(docs, "ServiceMonitor", "kiln-triton")
    assert [ep["path"] for ep in sm["spec"]["endpoints"]] == [TRITON_METRICS_PATH]


def _dockerfile(name: str) -> str:
    return (ROOT / "docker" / f"{name}.Dockerfile").read_text()


def test_gateway_image_matches_app(app_routes: set[str]) -> None:
    text = _dockerfile("gateway")
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert exposed == {Settings.model_fields["port"].default, Settings.model_fields["grpc_port"].default}
    assert re.findall(r"/healthz", text) and "/healthz" in app_routes
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    assert entrypoint == ["kiln", "serve"]


def test_every_manifest_container_image_is_built_here() -> None:
    built = {p.stem for p in (ROOT / "docker").glob("*.Dockerfile")}
    for name in KUSTOMIZATIONS:
        for w in of_kind(render(name), "Deployment"):
            for c in w["spec"]["template"]["spec"]["containers"]:
                image = c["image"].rsplit("/", 1)[-1].split(":")[0]
                assert image.removeprefix("kiln-") in built, c["image"]
