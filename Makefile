PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_WORKERS ?= 2

.PHONY: install test bench lint run

install:
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[dev]'

test: install
	$(PYTHON) -m pytest -q -n $(PYTEST_WORKERS) tests

bench: install
	$(PYTHON) -m bench.engine_bench

lint:
	$(PYTHON) -m ruff check engine tests bench
