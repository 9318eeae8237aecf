# syntax=docker/dockerfile:1
# The service's images, built from the lock (constraints.txt). docker-compose.yml runs them.
#   docker build --target api -t finetune-api .        the API:    finetune serve --workers 0
#   docker build --target worker -t finetune-worker .  a worker:   finetune worker --queues gpu --gpus all
#
# Both targets start from the same python:3.11-slim base. The worker needs no nvidia/cuda base image:
# PyPI's torch wheels bundle the CUDA runtime, cuDNN and NCCL (the nvidia-* packages in the lock), so all
# a container needs from the host is the driver, which the NVIDIA Container Toolkit mounts in when compose
# reserves GPUs. A CUDA base would add a second copy of those libraries (gigabytes) and its own Python.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- console: the web console's scripts and styles, built from console/ with npm's lock --------------
# A stage of its own: Node.js stays out of the service's images; only the built files are copied on.
FROM node:20-bookworm-slim AS console
WORKDIR /src/console
COPY console/package.json console/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY console/src/ src/
COPY examples/ /src/examples/
RUN npm run build

# --- runtime: the project and its locked dependencies in a virtual environment; what both targets share --
# One stage, not a builder stage whose venv a runtime stage copies: that copy is a second layer of the same
# gigabytes of torch, which every build writes to the build host's disk (CI's disk once ran out there). The
# slim image has no compilers to leave behind: every dependency installs from a wheel.
FROM ${PYTHON_IMAGE} AS runtime
# A fixed uid, so volumes and Kubernetes' runAsNonRoot see the same user everywhere.
RUN groupadd --system --gid 10001 finetune \
    && useradd --system --uid 10001 --gid finetune --home-dir /var/lib/finetune --shell /usr/sbin/nologin finetune \
    && mkdir -p /var/lib/finetune /srv/finetune/artifacts /srv/finetune/torch /srv/finetune/cache \
    && chown -R finetune:finetune /var/lib/finetune /srv/finetune
# pip compiles every module to bytecode as it installs: the runtime's user cannot write it later.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, in a layer of their own (torch with CUDA is most of the image): editing the code
# does not download them again. The list is pyproject's, each pinned by the lock.
COPY pyproject.toml constraints.txt ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt
COPY README.md ./
COPY training/ training/
COPY app/ app/
COPY worker/ worker/
COPY cli/ cli/
COPY migrations/ migrations/
COPY --from=console /src/app/console/static/dist/ app/console/static/dist/
# The project itself, not editable: the sources it was built from go once it is in the venv.
RUN pip install --no-cache-dir -c constraints.txt . \
    && pip check \
    && rm -rf /src
# FT_HOME: this container's scratch (job work folders, extracted data sets). The torch weights cache and the fetch
# cache (FT_CACHE_DIR) are volumes in compose; these folders, owned by the app's user, seed them (a new volume
# takes its folder's owner: without them it is root's, and the worker cannot write its cache).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FT_HOME=/var/lib/finetune \
    FT_ARTIFACTS_DIR=/srv/finetune/artifacts \
    TORCH_HOME=/srv/finetune/torch
WORKDIR /var/lib/finetune
USER 10001:10001

# --- worker: trains jobs, one Celery worker process per visible GPU ----------------------------------
FROM runtime AS worker
# compute for CUDA, utility for nvidia-smi, which `--gpus all` uses to count the GPUs without touching CUDA.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
# The heartbeat its Celery processes record from their task loop, read back for this host: lighter than
# `celery inspect ping` (no broadcast through the broker every 30 s from every container, no Celery
# start-up), and it fails when a worker's loop hangs or it loses the broker, as a ping would.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "app.observability.heartbeats"]
CMD ["finetune", "worker", "--queues", "gpu", "--gpus", "all"]

# --- api: the HTTP API alone (the workers run in their own containers) -------------------------------
# The same environment as the worker, torch included: dry runs (POST /v1/jobs/validate) build the model on
# the CPU. PyPI's torch wheel is the CUDA build, so this image is as large as the worker's.
FROM runtime AS api
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["finetune", "serve", "--workers", "0", "--host", "0.0.0.0", "--port", "8000"]
