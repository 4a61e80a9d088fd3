# Credit-risk model serving: train (ml/), serve (app/), ship (Dockerfile, k8s/).
# `make` alone lists the targets.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8080
ENV ?= prod
IMAGE ?= credit-risk-api
LOCAL_KEYS ?= .local/api-keys.yaml
TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
DEB_PACKAGES := chromium chromium-driver postgresql prometheus wrk
# Artifacts are signed (docs/deploy.md, "Signing"): locally with a development key pair under
# .keys/ (gitignored, made by `make dev-keys`); set both variables to use another key.
DEV_KEYS := $(CURDIR)/.keys
export MODEL_SIGNING_KEY_FILE ?= $(DEV_KEYS)/signing.pem
export MODEL_TRUSTED_KEYS ?= $(DEV_KEYS)/trusted

.DEFAULT_GOAL := help
.PHONY: help install install-dev system-deps dev-keys train api run test lint bench docker-build deploy clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.runtime: $(VENV)/bin/python requirements.txt setup.cfg setup.py ml/serving/_treewalk.c
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

install: $(VENV)/.runtime ## Create .venv and install the pinned runtime dependencies
install-dev: $(VENV)/.dev ## Also install the pinned test and lint tools

system-deps: ## Install the Debian packages the tests need (chromium, postgresql, prometheus, wrk)
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; fi; \
	fi

dev-keys: install ## Generate the development signing key pair under .keys/ if there is none
	@if [ "$(MODEL_SIGNING_KEY_FILE)" = "$(DEV_KEYS)/signing.pem" ] && [ ! -f "$(DEV_KEYS)/signing.pem" ]; then \
	  $(PY) -m ml keygen --private "$(DEV_KEYS)/signing.pem" --public "$(DEV_KEYS)/trusted/dev.pub"; fi

train: install dev-keys ## Train, evaluate, sign and publish a model artifact under models/
	$(PY) -m ml train

api: install ## Serve the latest artifact with gunicorn on :$(PORT)
	PORT=$(PORT) $(VENV)/bin/gunicorn -c gunicorn.conf.py 'app:create_app()'

run: install dev-keys ## Train the default model if none exists, then serve on :$(PORT) (Swagger at /apidocs)
	@test -f models/LATEST || $(PY) -m ml train
	@# Access control: a local key file with one all-scopes key, made (and shown) once.
	@if [ -z "$$API_KEYS_FILE$$OIDC_ISSUER" ] && [ ! -f $(LOCAL_KEYS) ]; then \
	  key=$$($(PY) -m app keys --file $(LOCAL_KEYS) create --name local --scopes all) && \
	  echo "API key (shown once, all scopes): $$key" && \
	  echo "  curl -H 'Authorization: Bearer $$key' http://localhost:$(PORT)/model"; \
	fi
	@echo "Form: http://localhost:$(PORT)/  API docs: http://localhost:$(PORT)/apidocs/"
	API_KEYS_FILE=$${API_KEYS_FILE:-$$( [ -n "$$OIDC_ISSUER" ] || echo $(LOCAL_KEYS))} \
	  PORT=$(PORT) $(VENV)/bin/gunicorn -c gunicorn.conf.py 'app:create_app()'

test: system-deps install-dev ## Install everything and run the whole test suite with coverage
	$(PY) -m pytest --cov --cov-report=term --cov-report=xml

lint: install-dev ## flake8 on the Python code
	$(VENV)/bin/flake8 ml app tests benchmarks

bench: install-dev ## Run the benchmarks and print their figures
	$(PY) benchmarks/run_all.py

docker-build: ## Build the trainer and api images (needs a Docker engine, or DOCKER=podman)
	$(or $(DOCKER),docker) build --target trainer --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) -t $(IMAGE)-trainer:$(TAG) .
	$(or $(DOCKER),docker) build --target api --build-arg VERSION=$(TAG) --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) -t $(IMAGE):$(TAG) .

deploy: ## Roll out to OpenShift: oc apply -k k8s/overlays/$(ENV), then wait for the rollout
	oc apply -k k8s/overlays/$(ENV)
	oc rollout status deployment/credit-risk-api --timeout=10m

clean: ## Remove the virtualenv, built models and reports
	rm -rf $(VENV) models reports .coverage* coverage.xml
