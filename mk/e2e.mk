# Inner loop (skaffold), kind e2e suite, and the offline checks of their configuration.
# Included by the Makefile (`-include mk/*.mk`); uses $(PY) and `install` from there and
# `chart-deps` (helm repo add nats + valkey, helm dependency build chart) from mk/chart.mk.
# `e2e` and `dev` need docker, kind, kubectl and helm (and skaffold for `dev`); `e2e-existing` needs kubectl
# and helm; `ci-config-test` needs none.

KIND_CLUSTER ?= kiqstack-e2e
KIND_DEV_CLUSTER ?= kiqstack-dev

.PHONY: e2e
e2e: install ## kind e2e: cluster, images (kiqstack + the example task package), metrics-server, helm install, helm test, pytest e2e/ (KEEP_CLUSTER=1 keeps it).
	E2E_CLUSTER=kind KIND_CLUSTER=$(KIND_CLUSTER) PYTHON=$(PY) bash e2e/run.sh

.PHONY: e2e-existing
e2e-existing: install ## The same on the current kube context: helm install, helm test, pytest e2e/ (needs E2E_IMAGE/E2E_TAG: the example image of `make example-image` the cluster can pull; metrics-server; a CNI enforcing NetworkPolicies, else E2E_NETWORK_POLICY=unenforced).
	E2E_CLUSTER=existing PYTHON=$(PY) bash e2e/run.sh

.PHONY: dev-cluster
dev-cluster: ## Create a kind cluster for `make dev` (KIND_DEV_CLUSTER, default kiqstack-dev) unless it exists.
	kind get clusters 2>/dev/null | grep -qx '$(KIND_DEV_CLUSTER)' \
		|| kind create cluster --name '$(KIND_DEV_CLUSTER)' --config e2e/kind-config.yaml --wait 180s

.PHONY: dev
dev: chart-deps ## skaffold dev on the current kube context: build, deploy, sync app/**/*.py, reload, port-forward :8000.
	skaffold dev

.PHONY: ci-config-test
ci-config-test: install ## Check skaffold.yaml, kind config, workflows and dev/e2e values offline; collect e2e/.
	$(PY) -m pytest tests/ci -q $(PYTEST_ARGS)
	$(PY) -m pytest --collect-only -q e2e/
