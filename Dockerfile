# opd-megatron GPU image: CUDA 13 + Python 3.12, SGLang 0.5.23, Megatron-Core 0.16.1,
# Transformer Engine 2.9.0, the package itself, and /opt/opd/versions.json (read by the run
# report). Cluster profiles (configs/clusters/*.yaml) name the image for srun --container-image.
#   docker build -t opd-megatron:0.1.0 .
#   docker run --gpus all --rm opd-megatron:0.1.0 opd validate recipes/opd-qwen3-8b-to-8b-base-3n8g.yaml
# Not built in CI (no GPU there); `hadolint Dockerfile` lints it.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04
FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG TE_VERSION=2.9.0

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    OPD_BASE_IMAGE=${BASE_IMAGE} \
    CUDA_DEVICE_MAX_CONNECTIONS=1

# Ubuntu 24.04's python3 is 3.12; git for the report's sha; build tools for TE's extension.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git build-essential \
      ninja-build curl ca-certificates libnuma1 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv "${VIRTUAL_ENV}"

WORKDIR /opt/opd/src
COPY requirements/gpu-image.txt requirements/gpu-image.txt
RUN pip install -r requirements/gpu-image.txt \
 && pip install --no-build-isolation "transformer-engine[pytorch]==${TE_VERSION}"

COPY . .
# --no-deps: pyproject pins the CPU stack's torch; the image's pins come from gpu-image.txt.
RUN pip install --no-deps -e . \
 && python launch/image_versions.py /opt/opd/versions.json

ENTRYPOINT []
CMD ["opd", "--help"]
