PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_WORKERS ?= 2

.PHONY: install test test-services bench fuzz load lint run openapi frontend test-frontend test-e2e results demo-models

install:
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[dev,web,plots]'

# KAVACH_E2E=1: the dashboard's browser tests (tests/e2e) run too; they need `make frontend` and /usr/bin/chromium
test: install frontend
	cd frontend && npm test
	KAVACH_E2E=1 $(PYTHON) -m pytest -q -n $(PYTEST_WORKERS) tests

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
frontend:
	cd frontend && npm ci --no-audit --no-fund && npm run generate && npm run build

# Vitest component tests, then the browser tests (Debian's chromium) against a real API and worker
test-frontend: frontend
	cd frontend && npm test

test-e2e: install frontend
	KAVACH_E2E=1 $(PYTHON) -m pytest -q -p no:xdist tests/e2e
