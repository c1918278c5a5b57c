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

$(VENV)/.installed: pyproject.toml
	@# Reuse a working .venv (>= 3.11); create one only when there is none.
	@if ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
		test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found (set PYTHON=...)" >&2; exit 1; }; \
		echo "$(PYTHON) -m venv $(VENV)"; $(PYTHON) -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv with kiqstack and its dev tools.

.PHONY: run
run: install ## Run API + worker with local NATS JetStream and Redis (Ctrl-C stops all).
	$(PY) scripts/run_local.py

.PHONY: lint
lint: install ## ruff (lint + format check) and mypy --strict on app/.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app

.PHONY: fmt
fmt: install ## Format and autofix with ruff.
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: test
test: lint ## Lint, type-check and run every test that needs no Docker engine or cluster.
	$(PY) -m pytest -m "not container and not e2e" $(PYTEST_ARGS)

# Targets of each area (image, chart, e2e, bench) live in mk/<area>.mk.
-include mk/*.mk
