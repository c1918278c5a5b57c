# kiqstack: one image for every role, chosen at run time by RUN_MODE=server|worker|both.
#
#   DOCKER_BUILDKIT=1 docker build -t kiqstack:dev .
#   # no registry (air gap): scripts/build-base-image.sh, then
#   DOCKER_BUILDKIT=1 docker build --build-arg BASE_IMAGE=kiqstack/python-base:bookworm -t kiqstack:dev .
#   # behind a TLS-intercepting proxy: add --secret id=pip_ca,src=/path/to/ca-bundle.crt
#
# Needs BuildKit (RUN --mount). Every Python package comes from uv.lock (`uv sync --frozen`): two
# builds of one commit install the same versions. Both stages use the same BASE_IMAGE, so the venv's
# python symlink resolves in the final stage whether Python lives in /usr/local/bin (official
# images) or /usr/bin (Debian's python3, e.g. the base built by scripts/build-base-image.sh).
ARG BASE_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

# uv's version matches the "uv==" pin of the dev extra in pyproject.toml (tests/container checks it).
ARG UV_VERSION=0.13.8
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /app

# pip_ca (optional build secret): a CA bundle for builds behind a TLS-intercepting proxy, handed to
# pip (PIP_CERT) and uv (SSL_CERT_FILE). It is mounted only for a RUN and never stored in a layer;
# without it both use the base image's own CA store.
# uv itself, from PyPI, in a venv of its own that stays in this stage.
RUN --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install -q "uv==${UV_VERSION}"

# Dependency layer: only pyproject.toml and uv.lock go in, so editing app/ never reinstalls them.
# The locked dependencies, plus the optional-dependency groups named in EXTRAS (e.g. EXTRAS=reload
# for skaffold dev), plus pip (dependency group `image`: images built FROM this one install their
# task packages with it). kiqstack-constraints.txt lists the same versions for those installs.
ARG EXTRAS=""
RUN --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    if [ -s /run/secrets/pip_ca ]; then export SSL_CERT_FILE=/run/secrets/pip_ca; fi \
 && extras=$(for e in $(echo "$EXTRAS" | tr ',' ' '); do printf -- '--extra %s ' "$e"; done) \
 && /opt/uv/bin/uv sync --frozen --no-dev --group image --no-install-project $extras \
 && /opt/uv/bin/uv export --frozen --no-dev --no-emit-project --no-hashes --no-header \
        --no-annotate $extras --output-file /opt/venv/kiqstack-constraints.txt >/dev/null

# Project layer: kiqstack itself, installed from the lock as an editable install of /app/app (the
# path the final stage puts the code at), so its metadata (importlib.metadata.version) and the
# `kiqstack` console script are real while the code stays in /app/app for skaffold's file sync.
# Test directories go, and pip's byte-code (7 MB; pip only runs while building derived images).
COPY pyproject.toml uv.lock README.md ./
COPY app/ app/
RUN --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/uv \
    if [ -s /run/secrets/pip_ca ]; then export SSL_CERT_FILE=/run/secrets/pip_ca; fi \
 && extras=$(for e in $(echo "$EXTRAS" | tr ',' ' '); do printf -- '--extra %s ' "$e"; done) \
 && /opt/uv/bin/uv sync --frozen --no-dev --group image $extras \
 && find /opt/venv -depth -type d -name tests -path '*/site-packages/*/tests' -exec rm -rf {} + \
 && find /opt/venv -depth -type d -name __pycache__ -path '*/site-packages/pip/*' -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

# Fixed non-root UID/GID: Kubernetes can check runAsNonRoot, volumes can be pre-chowned.
# /app belongs to that user so skaffold's file sync can write there in dev; in production the root
# filesystem is mounted read-only and only /tmp (an emptyDir or --tmpfs) is writable.
RUN groupadd --system --gid 10001 kiqstack \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin kiqstack \
 && install -d -o 10001 -g 10001 -m 0755 /app

# PIP_CONSTRAINT: `pip install` in an image built FROM this one keeps kiqstack's locked versions
# (a task package that needs others fails with pip's explanation instead of breaking kiqstack).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_CONSTRAINT=/opt/venv/kiqstack-constraints.txt \
    RUN_MODE=server

COPY --from=builder /opt/venv /opt/venv
COPY --chown=10001:10001 --chmod=0755 docker-entrypoint.sh /app/docker-entrypoint.sh
COPY --chown=10001:10001 app/ /app/app/

WORKDIR /app
USER 10001:10001
# API (server, both) and worker metrics/probes (worker, both).
EXPOSE 8000 9000

# Labels last: a new revision changes only this metadata, never a cached filesystem layer.
ARG SOURCE=""
ARG VERSION="0.0.0-dev"
ARG REVISION=""
LABEL org.opencontainers.image.title="kiqstack" \
      org.opencontainers.image.description="FastAPI + taskiq on NATS JetStream, results in Redis: API server, worker, or both (RUN_MODE)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

# Exec form: the entrypoint execs python, so python is PID 1 and receives SIGTERM from docker stop
# and the kubelet directly.
ENTRYPOINT ["/app/docker-entrypoint.sh"]
