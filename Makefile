# NewFuse developer entry points. `make help` lists them.
# CLUSTER=local (default): a real control plane built from source and run as local processes.
# CLUSTER=kind: for machines with Docker; documented, wired here, not exercised in CI.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CLUSTER ?= local
# NEWFUSE_CACHE moves the whole cache (binaries, Go module and build caches, uv).
CACHE ?= $(or $(NEWFUSE_CACHE),$(HOME)/.cache/newfuse)
export NEWFUSE_CACHE := $(CACHE)
UV_VERSION := 0.13.9
UV_HOME := $(CACHE)/tools/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
STATE := .local
KIND_CLUSTER ?= newfuse
KIND_KUBECONFIG := $(abspath $(STATE)/kind/kubeconfig)
PYTEST_ARGS ?=

export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export PYTHONPATH := $(abspath hack)

ifeq ($(CLUSTER),kind)
  # The tests and tooling honour NEWFUSE_KUBECONFIG instead of starting the local control plane.
  export NEWFUSE_KUBECONFIG := $(KIND_KUBECONFIG)
else ifneq ($(CLUSTER),local)
  $(error CLUSTER must be 'local' or 'kind', not '$(CLUSTER)')
endif

##@ Main

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target> [CLUSTER=local|kind]\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

.PHONY: demo
demo: deps binaries ## Local cluster + Redis + operator + a sample fleet, then its status
	@$(PY) -m localcluster demo

.PHONY: test
test: deps binaries ## Run every test: unit, integration and e2e (starts the cluster if needed)
	@hack/pytest.sh $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: deps ## Run only the fast unit tests (no cluster, no Redis)
	@hack/pytest.sh -m unit $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: deps binaries ## Run only the integration and e2e tests
	@hack/pytest.sh -m "integration or e2e" $(PYTEST_ARGS)

.PHONY: mutation
mutation: deps ## Mutation testing of the pure core and the wire contract (hack/mutation.py; >= 90% killed)
	$(PY) hack/mutation.py

.PHONY: bench
bench: deps binaries ## Benchmarks (not tests), 3 runs each: one table of medians vs baselines and targets, a record in bench/results/ (BENCH_ARGS="--only memory")
	$(PY) bench/summary.py $(BENCH_ARGS)

.PHONY: lint
lint: deps ## ruff (lint + format check), mypy --strict and import-linter
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: crds
crds: deps ## Regenerate crds/ and the chart's CRDs from the pydantic models (then `make manifests`)
	$(PY) -m newfuse.api.crdgen
	@$(MAKE) --no-print-directory manifests

.PHONY: manifests
manifests: deps ## Regenerate the kustomize base in config/ from the chart (helm template) and crds/
	$(PY) hack/gen_kustomize.py

.PHONY: fmt
fmt: deps ## Format and auto-fix with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

##@ Environment

.PHONY: deps
# redis-server for the tests; containerd, runc, the CNI plugins, buildah and debootstrap for the
# real node and its images (without them the real node stays off and its tests skip); chromium
# for the live page's browser test; wordnet-base for fleet memory's recall test (a public corpus).
DEBIAN_PACKAGES := redis-server containerd runc containernetworking-plugins buildah debootstrap chromium \
  wordnet-base

deps: $(VENV)/.synced ## Install everything: Debian packages (Redis, the real node's), the venv, checkov
	@# checkov (the security scan's scanner) in its own venv under the cache: its pins conflict
	@# with ours (hack/scanner.py says how and why).
	@UV=$(UV) $(PY) hack/scanner.py >/dev/null
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages: sudo apt-get install" $$missing \
	    "(redis-server, or set NEWFUSE_REDIS_URL; the rest only for the real node)" >&2; fi; \
	fi

$(UV):
	python3 -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

uv.lock: pyproject.toml | $(UV)
	$(UV) lock

.PHONY: binaries
binaries: ## Build (or find cached) etcd, Kubernetes, kwok and helm under ~/.cache/newfuse
ifeq ($(CLUSTER),local)
	@bash hack/localcluster/build.sh >/dev/null
endif

.PHONY: cluster-up
cluster-up: deps ## Start the control plane (3 fake nodes) and Redis on 127.0.0.1
ifeq ($(CLUSTER),kind)
	@mkdir -p $(STATE)/kind
	kind get clusters | grep -qx $(KIND_CLUSTER) || kind create cluster --name $(KIND_CLUSTER) --kubeconfig $(NEWFUSE_KUBECONFIG)
	kind get kubeconfig --name $(KIND_CLUSTER) > $(NEWFUSE_KUBECONFIG)
	$(PY) -m localcluster redis-up
else
	$(PY) -m localcluster up
endif

.PHONY: cluster-down
cluster-down: deps ## Stop the control plane and Redis; leaves no process of ours running
ifeq ($(CLUSTER),kind)
	-kind delete cluster --name $(KIND_CLUSTER)
	$(PY) -m localcluster redis-down
else
	$(PY) -m localcluster down
endif

.PHONY: cluster-status
cluster-status: deps ## Show what runs and how to reach it
	@$(PY) -m localcluster status

.PHONY: redis-up
redis-up: deps ## Start only Redis
	$(PY) -m localcluster redis-up

.PHONY: redis-down
redis-down: deps ## Stop only Redis
	$(PY) -m localcluster redis-down

.PHONY: clean
clean: cluster-down ## Stop everything and delete local state (.local/, .venv/); keeps the binary cache
	rm -rf $(STATE) $(VENV)

##@ kind (needs Docker; hack/kind/kind.sh; not exercised in CI here)

# These always act on the kind cluster $(KIND_CLUSTER), with or without CLUSTER=kind; its
# kubeconfig is the one CLUSTER=kind uses. helm and kubectl: .local/bin, else PATH.
KIND_SH := KIND_CLUSTER=$(KIND_CLUSTER) KIND_KUBECONFIG=$(KIND_KUBECONFIG) bash hack/kind/kind.sh

.PHONY: kind-up
kind-up: ## kind cluster + both images built and loaded + the chart (with its trial Redis)
	$(KIND_SH) up

.PHONY: kind-e2e
kind-e2e: deps ## kind-up, then the sample fleet in a restricted namespace and tasks through it
	$(KIND_SH) e2e

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	$(KIND_SH) down
