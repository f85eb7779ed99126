# Kiln export: PyTorch checkpoint -> verified ONNX variants -> Triton model repository.
#
#   docker build -f docker/export.Dockerfile -t kiln-export:0.1.0 .
#   docker run --rm -v $PWD/checkpoints:/checkpoints:ro -v $PWD/model_repository:/models kiln-export:0.1.0 \
#       --checkpoint /checkpoints/demo-lm --repository /models --name demo-lm
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# torch is pinned to the CPU build: the default index would pull a multi-GB CUDA wheel.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Optional extras, e.g. --build-arg EXTRA_PIP="tensorrt" on a CUDA base.
ARG EXTRA_PIP=""
ARG PIP_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY docker/wheels/ /tmp/wheels/
COPY pyproject.toml README.md ./
COPY service ./service
COPY export ./export
COPY contracts ./contracts
COPY cli ./cli
RUN python3 -m venv /opt/kiln \
 && /opt/kiln/bin/pip install ${PIP_ARGS} --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
 && /opt/kiln/bin/pip install ${PIP_ARGS} --no-cache-dir ".[export]" ${EXTRA_PIP} \
 && /opt/kiln/bin/python -c "import torch, sys; v = '${TORCH_VERSION}'; sys.exit(not torch.__version__.startswith(v))"

FROM ${BASE}
LABEL org.opencontainers.image.title="kiln-export"
ENV PATH=/opt/kiln/bin:$PATH PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 kiln \
 && useradd --system --uid 10001 --gid kiln --create-home --home-dir /home/kiln --shell /usr/sbin/nologin kiln
COPY --from=build /opt/kiln /opt/kiln
USER 10001:10001
WORKDIR /home/kiln
ENTRYPOINT ["kiln", "export"]
CMD ["--checkpoint", "/checkpoints/demo-lm", "--repository", "/models", "--name", "demo-lm"]
