#!/usr/bin/env bash
# Installs a real Triton Inference Server 2.51 that runs on CPU, for Kiln's tests and local runs.
# Idempotent: a second run checks the pieces and returns at once.
#
#   .wheels/        nvidia-pytriton==0.7.0 wheel (downloaded with pip --no-deps: only its binary is used)
#   .triton/        the wheel's tritonserver binary, bundled libs and python backend (unpacked, not installed)
#   .venv-triton/   the python backend stub's environment: numpy<2 (the 0.7.0 stubs are built for the
#                   numpy 1 ABI; numpy 2 corrupts tensors silently), onnxruntime, tokenizers.
#                   Kiln's engine modules are not installed here: `kiln export --target triton` copies
#                   them into the model directory, so the repository is self-contained (docs/triton.md).
#
# Usage: deploy/triton/install.sh            (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
PYTRITON_VERSION="0.7.0"
WHEELS="$ROOT/.wheels"
TRITON_DIR="$ROOT/.triton"
ENV_DIR="$ROOT/.venv-triton"
TS="$TRITON_DIR/pytriton/tritonserver"
STAMP="$TRITON_DIR/.installed-$PYTRITON_VERSION"
ENV_PKGS=("numpy<2" "onnxruntime>=1.18" "tokenizers>=0.19")

log() { echo "[triton-install] $*" >&2; }
trap 'log "failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

if [[ "$(uname -m)" != "x86_64" ]]; then
    log "nvidia-pytriton ships tritonserver for x86_64 only (this is $(uname -m))"; exit 2
fi
PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"

env_ok() {
    [[ -x "$ENV_DIR/bin/python" ]] && "$ENV_DIR/bin/python" - <<'PY' 2>/dev/null
import numpy, onnxruntime, tokenizers
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__
PY
}

if [[ -f "$STAMP" && -x "$TS/bin/tritonserver" && -x "$TS/backends/python/triton_python_backend_stub" ]] && env_ok; then
    log "already installed: $TS/bin/tritonserver, $ENV_DIR"; exit 0
fi

# 1. The wheel, without its Python dependencies (we only want the server binary).
WHEEL="$(ls "$WHEELS"/nvidia_pytriton-"$PYTRITON_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$WHEEL" ]]; then
    log "downloading nvidia-pytriton==$PYTRITON_VERSION (~55 MB)"
    "$PYTHON" -m pip download -q --no-deps "nvidia-pytriton==$PYTRITON_VERSION" -d "$WHEELS"
    WHEEL="$(ls "$WHEELS"/nvidia_pytriton-"$PYTRITON_VERSION"-*.whl | head -n1)"
fi

# 2. Unpack the server and its bundled libs side by side (their RPATHs are $ORIGIN-relative).
if [[ ! -x "$TS/bin/tritonserver" ]]; then
    log "unpacking $(basename "$WHEEL") into .triton/"
    rm -rf "$TRITON_DIR.tmp" && mkdir -p "$TRITON_DIR.tmp"
    "$PYTHON" - "$WHEEL" "$TRITON_DIR.tmp" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/")):
            path = z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
PY
    rm -rf "$TRITON_DIR" && mv "$TRITON_DIR.tmp" "$TRITON_DIR"
fi

# 3. The python backend looks for its stub at <backend-directory>/python/.
STUB="$TS/python_backend_stubs/$PYVER/triton_python_backend_stub"
[[ -f "$STUB" ]] || { log "the wheel has no python backend stub for Python $PYVER"; exit 2; }
cp "$STUB" "$TS/backends/python/triton_python_backend_stub"
chmod +x "$TS/backends/python/triton_python_backend_stub" "$TS/bin/tritonserver"

# 4. The stub's environment (numpy<2).
if ! env_ok; then
    log "creating .venv-triton (numpy<2, onnxruntime, tokenizers)"
    [[ -x "$ENV_DIR/bin/python" ]] || "$PYTHON" -m venv "$ENV_DIR"
    "$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check "${ENV_PKGS[@]}"
    env_ok || { log ".venv-triton is not usable (numpy<2, onnxruntime, tokenizers)"; exit 1; }
fi

touch "$STAMP"
log "installed: $TS/bin/tritonserver (python stub for $PYVER), stub env $ENV_DIR"
