# Helm chart targets (chart/). No helm CLI is needed: tests render and lint with Helm 4 as a library
# (helm-python-sdk) against stand-in nats/valkey subcharts.

.PHONY: chart-lint
chart-lint: install ## helm lint --strict of chart/ (helm_python) and the chart README check.
	$(PY) -m pytest tests/chart/test_chart_lint_docs.py -q -m chart $(PYTEST_ARGS)

.PHONY: chart-test
chart-test: install ## Render chart/ over the values matrix, validate for Kubernetes 1.33/1.36, refuse bad values.
	$(PY) -m pytest tests/chart -q -m chart $(PYTEST_ARGS)

.PHONY: chart-docs
chart-docs: install ## Regenerate chart/README.md from README.md.gotmpl and the values.yaml "# --" comments.
	$(PY) scripts/chart_docs.py

.PHONY: chart-docs-check
chart-docs-check: install ## Fail when chart/README.md is out of date.
	$(PY) scripts/chart_docs.py --check

.PHONY: chart-deps
chart-deps: ## helm dependency build chart (needs the helm CLI and network to the chart repositories).
	helm repo add nats https://nats-io.github.io/k8s/helm/charts/ --force-update
	helm repo add valkey https://valkey.io/valkey-helm/ --force-update
	helm dependency build chart
