# Kiln gateway: FastAPI + ONNX Runtime + tokenizers. No torch, no compilers in the final stage.
#
#   docker build -f docker/gateway.Dockerfile -t kiln-gateway:0.1.0 .
#
# BASE must provide python3 >= 3.11 with the venv module. Offline builds: put wheels in
# docker/wheels/ and pass --build-arg PIP_ARGS="--no-index --find-links /tmp/wheels".
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ARG PIP_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY docker/wheels/ /tmp/wheels/
COPY pyproject.toml README.md ./
COPY service ./service
COPY export ./export
COPY contracts ./contracts
COPY cli ./cli
# A self-contained venv at /opt/kiln; pip itself is removed so the final stage cannot install anything.
RUN python3 -m venv /opt/kiln \
 && /opt/kiln/bin/pip install ${PIP_ARGS} --no-cache-dir . \
 && /opt/kiln/bin/python -c "import service.app, sys; assert 'torch' not in sys.modules" \
 && /opt/kiln/bin/pip uninstall -y -q pip \
 && find /opt/kiln -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
LABEL org.opencontainers.image.title="kiln-gateway" \
      org.opencontainers.image.description="Kiln inference gateway (FastAPI, ONNX Runtime)"
ENV PATH=/opt/kiln/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KILN_MODEL_REPOSITORY=/models \
    KILN_HOST=0.0.0.0 \
    KILN_PORT=8000 \
    KILN_GRPC_PORT=50051
RUN groupadd --system --gid 10001 kiln \
 && useradd --system --uid 10001 --gid kiln --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kiln
COPY --from=build /opt/kiln /opt/kiln
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('KILN_PORT', '8000'), timeout=2)"]
# Exec form: the Python process is PID 1 and receives SIGTERM itself (graceful drain, KILN_DRAIN_S).
ENTRYPOINT ["kiln", "serve"]
