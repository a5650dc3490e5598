# syntax=docker/dockerfile:1
# simsearch: the HTTP service with the bundled CIFAR-10 Hybrid-1 model.
#   docker build -t simsearch:cpu .                         (default: slim CPU image)
#   docker build -t simsearch:gpu --build-arg VARIANT=gpu .  (CUDA torch + faiss-gpu; run with --gpus all)
#   docker build -t simsearch:train --build-arg EXTRAS=train .  (also `simsearch train`/`evaluate`)
#   docker run -p 8000:8000 -v simsearch-data:/data -e SIMSEARCH_API_KEY=... simsearch:cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with torch, faiss and the project ------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG FAISS_GPU_VERSION=1.14.1.post1
# extras of the project to install beside the service: "" (serving, indexing, searching), "train",
# "onnx" (SIMSEARCH_RUNTIME=onnx and simsearch model-export), "milvus" (SIMSEARCH_MILVUS_URI), or
# several ("train,onnx")
ARG EXTRAS=""
# where the CPU wheels of torch come from (a mirror can be given here)
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first: the largest layer, and the one that changes least. The CPU wheels (about 200 MB)
# come from the PyTorch CPU index; PyPI's Linux wheels are the CUDA build (several GB). torchvision
# (only the train extra uses it) must come from the same index as torch, so it is installed here too.
# hadolint ignore=DL3013
RUN case ",${EXTRAS}," in *,train,*) tv="torchvision==${TORCHVISION_VERSION}" ;; *) tv="" ;; esac \
    && case "$VARIANT" in \
      cpu) pip install "torch==${TORCH_VERSION}" ${tv:+"$tv"} --index-url "${TORCH_CPU_INDEX}" ;; \
      gpu) pip install "torch==${TORCH_VERSION}" ${tv:+"$tv"} ;; \
      *) echo "VARIANT must be cpu or gpu, got '$VARIANT'" >&2; exit 1 ;; \
    esac
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY cli ./cli
COPY index ./index
COPY model ./model
COPY training ./training
# faiss-gpu-cu12 has the same Python module as faiss-cpu: remove one before installing the other.
# hadolint ignore=DL3013
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
    && if [ "$VARIANT" = "gpu" ]; then pip uninstall -y faiss-cpu && pip install "faiss-gpu-cu12==${FAISS_GPU_VERSION}"; fi \
    && python -c "import model, app, index; p = model.default_artifact_path('cifar10'); assert p.is_file(), f'bundled model missing: {p}'"

# ---- runtime: the environment, a non-root user, the index on a volume --------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="simsearch" \
      org.opencontainers.image.description="Image similarity search (Hybrid-1 + FAISS + FastAPI), ${VARIANT} variant"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SIMSEARCH_DATA_DIR=/data \
    SIMSEARCH_PORT=8000
RUN groupadd --gid 10001 simsearch \
    && useradd --uid 10001 --gid simsearch --home-dir /data --no-create-home \
               --shell /usr/sbin/nologin simsearch \
    && mkdir -p /data && chown simsearch:simsearch /data
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
# Liveness; readiness (model and index loaded) is GET /readyz, used by docker-compose.yml.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["simsearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
