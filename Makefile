PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_WORKERS ?= 2
TORCH_VERSION := 2.14.1
TORCHVISION_VERSION := 0.29.1

.PHONY: install system-deps test test-services bench fuzz load lint run openapi frontend test-frontend test-e2e \
	results demo-models

# Install and build steps run only when their inputs changed: a stamp (or the build's own output) newer
# than its inputs means done. The install stamp is trusted only while scripts/python_env_ok.py finds this
# checkout and its requirements installed in $(PYTHON) (a deleted venv or another PYTHON reinstalls).
INSTALL_STAMP := .stamps/install-torch-$(TORCH_VERSION)-torchvision-$(TORCHVISION_VERSION)
install:
	@$(PYTHON) scripts/python_env_ok.py 2>/dev/null || rm -f $(INSTALL_STAMP)
	@$(MAKE) --no-print-directory $(INSTALL_STAMP)

$(INSTALL_STAMP): pyproject.toml
	$(PIP) install -q torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	$(PIP) install -q -e '.[dev,web,plots]'
	@mkdir -p $(@D) && rm -f .stamps/install-* && touch $@

# chromium and dataset-fashion-mnist from apt when missing (sudo when not root); Node.js >= 20 checked
system-deps:
	scripts/install_system_deps.sh

# KAVACH_E2E=1: the dashboard's browser tests (tests/e2e) run too, on Debian's /usr/bin/chromium
test: system-deps install frontend
	cd frontend && npm test
	KAVACH_E2E=1 $(PYTHON) -m pytest -q -rs -n $(PYTEST_WORKERS) tests

# the storage and queue tests against real servers (CI has PostgreSQL and Redis on loopback)
TEST_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
test-services: install
	KAVACH_TEST_DATABASE_URL=$(TEST_DATABASE_URL) KAVACH_TEST_REDIS_URL=$(TEST_REDIS_URL) \
		$(PYTHON) -m pytest -q -p no:xdist tests/backend

# API on http://127.0.0.1:$${PORT:-8000}, one worker, embedded Redis unless REDIS_URL is set; Ctrl-C stops all
run: install frontend
	$(PYTHON) -m backend.run

openapi:
	$(PYTHON) -m backend.openapi

# docs/results.md: the Fashion-MNIST demo models certified by NP and DSRS (the issue's setting: 500 images, n = 100k)
RESULTS_COUNT ?= 500
RESULTS_N ?= 100000
results: install
	$(PYTHON) -m bench.results --count $(RESULTS_COUNT) --n $(RESULTS_N)

# models/demo/: retrain every demo model with the commands recorded in its manifest
demo-models: install
	scripts/make_demo_models.sh all

bench: install
	$(PYTHON) -m bench.engine_bench

# schemathesis against openapi.json on a loopback service, every operation with a token: no 5xx, answers as
# declared (FUZZ_EXAMPLES per operation, FUZZ_SECONDS at most); writes bench/results/fuzz.json
fuzz: install
	$(PIP) install -q -e '.[fuzz]'
	$(PYTHON) -m tests.fuzz.run_fuzz

# LOAD_CLIENTS (50) clients reading jobs for LOAD_SECONDS (20) while a job runs; bench/results/service_load.json
load: install
	$(PYTHON) -m bench.service_load

lint:
	$(PYTHON) -m ruff check engine backend tests bench

# the dashboard: node deps from package-lock.json, the API client generated from openapi.json, then frontend/dist
FRONTEND_SOURCES := $(shell find frontend/src -type f -not -path 'frontend/src/client/*' 2>/dev/null) \
	frontend/index.html frontend/package.json frontend/tsconfig.json frontend/vite.config.ts
frontend: frontend/dist/index.html

frontend/node_modules/.stamp: frontend/package-lock.json frontend/package.json
	cd frontend && npm ci --no-audit --no-fund
	touch $@

frontend/src/client/index.ts: openapi.json frontend/openapi-ts.config.ts frontend/node_modules/.stamp
	cd frontend && npm run generate
	touch $@

frontend/dist/index.html: $(FRONTEND_SOURCES) frontend/src/client/index.ts frontend/node_modules/.stamp
	cd frontend && npm run build
	touch $@

# Vitest component tests, then the browser tests (Debian's chromium) against a real API and worker
test-frontend: frontend
	cd frontend && npm test

test-e2e: system-deps install frontend
	KAVACH_E2E=1 $(PYTHON) -m pytest -q -p no:xdist tests/e2e
