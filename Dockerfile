# kiqstack: one image for every role, chosen at run time by RUN_MODE=server|worker|both.
#
#   DOCKER_BUILDKIT=1 docker build -t kiqstack:dev .
#   # no registry (air gap): scripts/build-base-image.sh, then
#   DOCKER_BUILDKIT=1 docker build --build-arg BASE_IMAGE=kiqstack/python-base:bookworm -t kiqstack:dev .
#   # behind a TLS-intercepting proxy: add --secret id=pip_ca,src=/path/to/ca-bundle.crt
#
# Needs BuildKit (RUN --mount). Both stages use the same BASE_IMAGE, so the venv's python symlink
# resolves in the final stage whether Python lives in /usr/local/bin (official images) or /usr/bin
# (Debian's python3, e.g. the base built by scripts/build-base-image.sh).
ARG BASE_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src

# Dependency layer: only pyproject.toml goes in, so editing app/ never reinstalls dependencies.
# The pinned [project].dependencies (plus the optional-dependency groups named in EXTRAS, e.g.
# EXTRAS=reload for skaffold dev) are installed into /opt/venv; the project itself is registered
# with a metadata-only dist-info, so importlib.metadata.version("kiqstack") works while the code
# stays in /app. pip and setuptools (Python 3.11 venvs get it) are removed: nothing installs at run time.
# pip_ca (optional build secret): a CA bundle for pip, for builds behind a TLS-intercepting proxy.
# It is mounted only for this RUN and never stored in a layer.
ARG EXTRAS=""
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m venv /opt/venv \
 && python3 -c 'import os, tomllib; \
p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = os.environ.get("EXTRAS", "").replace(",", " ").split(); \
deps = p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]; \
print("\n".join(deps))' > requirements.txt \
 && /opt/venv/bin/pip install -r requirements.txt \
 && /opt/venv/bin/python -c 'import pathlib, sysconfig, tomllib; \
p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
d = pathlib.Path(sysconfig.get_path("purelib"), p["name"] + "-" + p["version"] + ".dist-info"); \
d.mkdir(); \
(d / "METADATA").write_text("Metadata-Version: 2.1\nName: " + p["name"] + "\nVersion: " + p["version"] + "\n"); \
(d / "INSTALLER").write_text("Dockerfile\n"); \
(d / "RECORD").write_text("")' \
 && /opt/venv/bin/python -m pip uninstall -q -y setuptools pip \
 && find /opt/venv -depth -type d -name tests -path '*/site-packages/*/tests' -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

# Fixed non-root UID/GID: Kubernetes can check runAsNonRoot, volumes can be pre-chowned.
# /app belongs to that user so skaffold's file sync can write there in dev; in production the root
# filesystem is mounted read-only and only /tmp (an emptyDir or --tmpfs) is writable.
RUN groupadd --system --gid 10001 kiqstack \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin kiqstack \
 && install -d -o 10001 -g 10001 -m 0755 /app

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
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
