# A stage worker: CUDA, torch and the project. One image serves any stage; the command picks
# which (`cascade worker --stages sr256`). Weights are mounted at run time, not baked in.
# Build from the repository root: docker build -f docker/worker.Dockerfile -t cascade-worker .
#
# torch's CUDA wheels bundle the CUDA runtime, cuDNN and cuBLAS, so the slim `base` image is
# enough; the host provides the driver (NVIDIA Container Toolkit). CUDA 13.0 wheels need a
# driver of the 580 series or newer; for an older driver build with
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (where that index carries
# the pinned version).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu22.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && useradd --create-home --uid 1000 cascade \
    && mkdir -p /data/results \
    && chown cascade /data/results
ENV PATH=/opt/venv/bin:$PATH

# torch first, the version the project pins and tests (the Makefile's TORCH_SPEC), from a CUDA
# index that serves it (its own layer: it is most of the image). The cu124 index ends at 2.6;
# PyTorch publishes each release for its newest CUDA lines, and cu130 is the line current
# releases carry.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
RUN pip install "${TORCH_SPEC}" --index-url ${TORCH_INDEX_URL}

WORKDIR /app
COPY pyproject.toml README.md ./
# The layers a worker imports (benchmarks and the HTTP API stay out of this image).
COPY cascade/ cascade/
COPY jobs/ jobs/
COPY workers/ workers/
RUN pip install ".[s3]"

USER cascade
ENV CASCADE_DEVICE=cuda \
    CASCADE_STORE=/data/results
# Healthy while this container's worker beats its heartbeat in Redis (compose and Kubernetes
# may run the same command as their own probe).
HEALTHCHECK --interval=30s --timeout=20s --start-period=5m --retries=3 \
    CMD ["cascade", "worker", "--check"]
ENTRYPOINT ["cascade"]
CMD ["worker"]
