# Benchmarks (bench/): kiqstack against stock taskiq-nats / taskiq-redis, Celery, Dramatiq and arq.
# PY, PYTHON, VENV and install come from the Makefile. BENCH_ARGS passes options, e.g.
# BENCH_ARGS="--repeat 5" or "--configs kiqstack dramatiq" or "--nats-url ... --redis-url ...".
BENCH_ARGS ?=
ARQ_VENV := $(VENV)/peers/arq

# The bench extra (Celery, Dramatiq, py-spy) goes into .venv; arq needs redis-py < 6, so it gets
# its own virtualenv (bench/requirements-arq.txt), used only for arq's worker and client.
# Every measured process runs from bytecode compiled ahead, as in the image (UV_COMPILE_BYTECODE):
# with PYTHONDONTWRITEBYTECODE set, a process would otherwise compile every module it imports, and
# the compiler's memory would count in its peak RSS.
BENCH_COMPILE = $(PY) -m compileall -q -j 0
$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml bench/requirements-arq.txt
	$(PY) -m pip install -q -e '.[dev,bench]'
	@test -x $(ARQ_VENV)/bin/python || { echo "$(PYTHON) -m venv $(ARQ_VENV)"; $(PYTHON) -m venv $(ARQ_VENV); }
	$(ARQ_VENV)/bin/python -m pip install -q --upgrade pip
	$(ARQ_VENV)/bin/python -m pip install -q -r bench/requirements-arq.txt
	$(BENCH_COMPILE) $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') >/dev/null
	$(ARQ_VENV)/bin/python -m compileall -q -j 0 $$($(ARQ_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') >/dev/null
	@touch $@

.PHONY: bench-peers
bench-peers: $(VENV)/.bench-installed ## Install the benchmark's peers (Celery, Dramatiq; arq in its own venv).

.PHONY: bench
bench: bench-peers ## Full comparison, 3 interleaved rounds (about 40 min on 2 cores); bench/results/latest.json.
	@$(BENCH_COMPILE) app bench >/dev/null
	$(PY) -m bench $(BENCH_ARGS)

.PHONY: bench-smoke
bench-smoke: bench-peers ## Benchmark harness check, every configuration, small N (< 2 min); bench/results/smoke.json.
	@$(BENCH_COMPILE) app bench >/dev/null
	$(PY) -m bench --smoke $(BENCH_ARGS)

.PHONY: bench-profile
bench-profile: bench-peers ## py-spy profiles of kiqstack's worker drain and client paths, worker imports and RSS.
	@$(BENCH_COMPILE) app bench >/dev/null
	$(PY) -m bench.profile $(BENCH_ARGS)
