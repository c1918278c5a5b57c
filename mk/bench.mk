# Benchmarks (bench/): kiqstack against stock taskiq-nats / taskiq-redis. PY and install come from
# the Makefile. BENCH_ARGS passes options, e.g. BENCH_ARGS="--repeat 3" or "--nats-url ... --redis-url ...".
BENCH_ARGS ?=

.PHONY: bench
bench: install ## Full benchmark (about 5 min); table on stdout, bench/results/latest.json.
	$(PY) -m bench $(BENCH_ARGS)

.PHONY: bench-smoke
bench-smoke: install ## Benchmark harness check, small N (< 60 s); writes bench/results/smoke.json.
	$(PY) -m bench --smoke $(BENCH_ARGS)
