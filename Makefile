# One entry point for people and CI. The venv lives in .venv (override with VENV=...).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: venv test test-unit test-integration test-slow demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## the whole test suite (unit + integration; soak tests need --run-slow)
test: venv
	$(PY) -m pytest -q

test-unit: venv
	$(PY) -m pytest -q tests/unit

test-integration: venv
	$(PY) -m pytest -q tests/integration

test-slow: venv
	$(PY) -m pytest -q --run-slow

## offline demo: private redis-server (if none is reachable), the simulator, the collector
demo: venv
	$(VENV)/bin/collector demo

## end-to-end benchmark: simulator firehose -> worker -> publisher -> Redis
bench: venv
	$(PY) bench/bench_e2e.py

clean:
	rm -rf $(VENV) .pytest_cache var
