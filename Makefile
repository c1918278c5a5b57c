# kiqstack: the Makefile is the interface. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
# The first Python >= 3.11 that actually runs (3.12 preferred).
PYTHON ?= $(shell for p in python3.12 python3.13 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; done)
PY := $(VENV)/bin/python
IMAGE ?= kiqstack:dev
BASE_IMAGE ?= kiqstack/python-base:bookworm
PYTEST_ARGS ?=

.PHONY: help
help: ## Show this help.
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# uv installs the dev venv from uv.lock (the locked versions `make test` runs) and maintains the
# lock. Its version is pinned in the dev extra of pyproject.toml (the Dockerfile's UV_VERSION is the
# same); on a fresh machine the venv's own pip bootstraps it once, then the lock keeps it.
UV_VERSION := $(shell sed -n 's/^ *"uv==\([^"]*\)".*/\1/p' pyproject.toml)
UV := $(VENV)/bin/uv
# uv works in $(VENV) and never downloads a Python of its own.
UV_ENV := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never
# Optional-dependency groups of pyproject.toml the dev venv gets.
INSTALL_EXTRAS ?= dev

$(VENV)/.installed: pyproject.toml uv.lock
	@# Reuse a working .venv (>= 3.11); create one only when there is none.
	@if ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
		test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found (set PYTHON=...)" >&2; exit 1; }; \
		echo "$(PYTHON) -m venv $(VENV)"; $(PYTHON) -m venv $(VENV); \
	fi
	@$(UV) --version 2>/dev/null | grep -q '^uv $(UV_VERSION) ' || { \
		echo "bootstrap uv $(UV_VERSION) into $(VENV)"; \
		$(PY) -m ensurepip >/dev/null && $(PY) -m pip install -q 'uv==$(UV_VERSION)'; }
	$(UV_ENV) $(UV) sync --frozen $(addprefix --extra ,$(INSTALL_EXTRAS))
	@touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv from uv.lock: kiqstack (editable) and its dev tools.

.PHONY: lock
lock: install ## Re-resolve uv.lock after editing dependencies in pyproject.toml, then reinstall.
	$(UV_ENV) $(UV) lock
	$(MAKE) install

.PHONY: lock-check
lock-check: install ## Fail when uv.lock does not match pyproject.toml (run `make lock`).
	@$(UV_ENV) $(UV) lock --check || { echo "uv.lock does not match pyproject.toml: run 'make lock'" >&2; exit 1; }

DIST ?= dist

.PHONY: dist
dist: install ## Wheel + sdist + constraints.txt (the lock's runtime versions) into dist/ (DIST=...).
	rm -rf '$(DIST)'
	$(UV_ENV) $(UV) build --quiet --out-dir '$(DIST)'
	$(UV_ENV) $(UV) export --quiet --frozen --no-dev --no-emit-project --no-hashes --no-header --no-annotate \
		--output-file '$(DIST)/constraints.txt' >/dev/null
	@ls '$(DIST)'

# Options of `make run`, e.g. RUN_ARGS="--nats-port 4223" (`make run RUN_ARGS=--help` lists them).
RUN_ARGS ?=

.PHONY: run
run: install ## Run API + worker with local NATS JetStream and Redis (Ctrl-C stops all).
	$(PY) scripts/run_local.py $(RUN_ARGS)

.PHONY: lint
lint: lock-check ## uv.lock up to date, ruff (lint + format check), mypy --strict on app/ and the example.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app examples/acme-tasks/acme_tasks

.PHONY: fmt
fmt: install ## Format and autofix with ruff.
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Coverage of app/ by every layer `make test` runs; the floor stops a change that leaves code untested.
COVERAGE ?= --cov=app --cov-report=term:skip-covered --cov-fail-under=78

.PHONY: test
test: lint ## Lint, type-check and run every test that needs no Docker engine or cluster.
	$(PY) -m pytest -m "not container and not e2e" $(COVERAGE) $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: install ## The unit layer only (tests/unit: no server, a broker in memory, fakeredis; seconds).
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

# Targets of each area (image, chart, e2e, bench) live in mk/<area>.mk.
-include mk/*.mk
