# acme-tasks with kiqstack as a dependency, in your own image (pattern 2 of "Your own tasks" in
# kiqstack's README): any Python >= 3.11 base, your venv, your user; kiqstack comes from its wheel
# (kiqstack's `make dist`) with the versions of its lock (dist/constraints.txt).
#
# Build context: this directory with kiqstack's dist/ copied in as kiqstack-dist/:
#   cp -r ../../dist kiqstack-dist       # kiqstack-<version>-py3-none-any.whl + constraints.txt
#   docker build -f standalone.Dockerfile -t acme-tasks:standalone .
# (or, instead of the wheel: pip install "kiqstack @ git+https://<your kiqstack repository>@<tag>")
ARG BASE_IMAGE=python:3.12-slim-bookworm
FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 acme \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin acme
RUN --mount=type=bind,target=/src,rw --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        -c /src/kiqstack-dist/constraints.txt /src/kiqstack-dist/kiqstack-*.whl /src
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TASK_MODULES=acme_tasks.tasks
USER 10001:10001
EXPOSE 8000 9000
# kiqstack's console script: `kiqstack` = `python -m app` (RUN_MODE=server|worker|both).
ENTRYPOINT ["kiqstack"]
