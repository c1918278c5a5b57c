# The soak layer (tests/soak/, marker soak). `make test` runs it at the default SOAK_SECONDS (75);
# soak-long runs it for an hour before a release. PY and install come from the Makefile.
SOAK_LONG_SECONDS ?= 3600

.PHONY: soak-long
soak-long: install ## Soak tests for an hour (SOAK_SECONDS=3600): idle workers, NATS restart, long tasks.
	SOAK_SECONDS=$${SOAK_SECONDS:-$(SOAK_LONG_SECONDS)} $(PY) -m pytest -m soak tests/soak $(PYTEST_ARGS)
