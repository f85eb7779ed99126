# Triton Inference Server with Kiln installed for the python-backend LM.
#
#   docker build -f docker/triton.Dockerfile -t kiln-triton:0.1.0 .
#
# Kiln needs Python >= 3.11 and Triton's python-backend stub runs the image's system python3, so
# the base must be a release on Ubuntu 24.04 (Python 3.12): 25.01 or newer.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.01-py3

FROM ${TRITON_IMAGE}
ARG PIP_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/kiln-src
COPY docker/wheels/ /tmp/wheels/
COPY pyproject.toml README.md ./
COPY service ./service
COPY export ./export
COPY contracts ./contracts
COPY cli ./cli
# Into the system interpreter that the python-backend stub embeds (PEP 668 on Ubuntu 24.04).
RUN python3 -m pip install ${PIP_ARGS} --no-cache-dir --break-system-packages . \
 && python3 -c "import service.backends.onnxruntime_lm" \
 && rm -rf /tmp/wheels
# tritonserver images ship the unprivileged user triton-server (uid 1000).
USER 1000:1000
WORKDIR /opt/tritonserver
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8000/v2/health/ready"]
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/models", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", \
     "--exit-timeout-secs=30"]
