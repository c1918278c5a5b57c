# Container image: build the base without a registry, build the image, test it for real.
# IMAGE, BASE_IMAGE, PY and install come from the Makefile.

, := ,

# A docker client that can use BuildKit (RUN --mount): one with the buildx plugin, or a client
# older than 23.0 (BuildKit built in). Override with DOCKER=/path/to/docker.
DOCKER ?= $(shell for d in $$(which -a docker 2>/dev/null); do \
	if $$d buildx version >/dev/null 2>&1; then echo $$d; break; fi; \
	v=$$($$d version --format '{{.Client.Version}}' 2>/dev/null); \
	case $$v in ([0-9].*|1[0-9].*|2[0-2].*) echo $$d; break;; esac; done)
# CA bundle handed to pip inside the build as the `pip_ca` secret (TLS-intercepting proxies);
# empty = pip uses the base image's own CA store.
PIP_CA ?= $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt))
IMAGE_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
IMAGE_SOURCE ?= $(shell git config --get remote.origin.url 2>/dev/null | grep -E '^https://' | sed 's/\.git$$//')
# Optional-dependency groups baked into the image, e.g. IMAGE_EXTRAS=reload for skaffold dev.
IMAGE_EXTRAS ?=

# The local base (default BASE_IMAGE) is built on demand; any other base is pulled by docker build.
LOCAL_BASE := $(filter kiqstack/python-base%,$(BASE_IMAGE))

.PHONY: build-base-image
build-base-image: ## Build the local Debian + python3 base with no registry (debootstrap; FORCE=1 rebuilds).
	DOCKER="$(or $(DOCKER),docker)" scripts/build-base-image.sh $(if $(FORCE),--force) $(BASE_IMAGE)

.PHONY: image
image: $(if $(LOCAL_BASE),build-base-image) ## Build the image (IMAGE, from BASE_IMAGE; the local base is built if needed).
	@test -n "$(DOCKER)" || { echo "error: no docker client with BuildKit found (set DOCKER=...)" >&2; exit 1; }
	DOCKER_BUILDKIT=1 $(DOCKER) build \
		--build-arg BASE_IMAGE=$(BASE_IMAGE) \
		--build-arg VERSION=$(IMAGE_VERSION) \
		--build-arg REVISION=$(IMAGE_REVISION) \
		--build-arg SOURCE=$(IMAGE_SOURCE) \
		--build-arg EXTRAS=$(IMAGE_EXTRAS) \
		--build-arg UV_VERSION=$(UV_VERSION) \
		$(if $(PIP_CA),--secret id=pip_ca$(,)src=$(PIP_CA)) \
		-t $(IMAGE) .

# The example task package (examples/acme-tasks) built FROM $(IMAGE): what the container tests run
# and the e2e deploys with image.repository/tag and config.taskModules.
EXAMPLE_IMAGE ?= kiqstack/acme-tasks:dev

.PHONY: example-image
example-image: image ## Build examples/acme-tasks FROM IMAGE as EXAMPLE_IMAGE (default kiqstack/acme-tasks:dev).
	DOCKER_BUILDKIT=1 $(DOCKER) build \
		--build-arg KIQSTACK_IMAGE=$(IMAGE) \
		$(if $(PIP_CA),--secret id=pip_ca$(,)src=$(PIP_CA)) \
		-t $(EXAMPLE_IMAGE) examples/acme-tasks

.PHONY: test-container
test-container: install ## Build the image (and the example's) and test its containers with real NATS + Redis.
	DOCKER="$(DOCKER)" IMAGE="$(IMAGE)" BASE_IMAGE="$(BASE_IMAGE)" PIP_CA="$(PIP_CA)" \
		EXAMPLE_IMAGE="$(EXAMPLE_IMAGE)" REQUIRE_DOCKER=1 \
		$(PY) -m pytest -m container tests/container $(PYTEST_ARGS)
