# One entry point for people and CI. The venv lives in .venv (override with VENV=...).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: venv test test-unit test-integration test-slow demo bench bench-md faults clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## the whole test suite (unit + integration; soak tests need --run-slow); two processes, one
## test file each at a time (every integration test has its own redis-server, ports and dirs)
test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile

test-unit: venv
	$(PY) -m pytest -q tests/unit

test-integration: venv
	$(PY) -m pytest -q tests/integration

test-slow: venv
	$(PY) -m pytest -q -n 2 --dist loadfile --run-slow

## offline demo: private redis-server (if none is reachable), the simulator, the collector
demo: venv
	$(VENV)/bin/collector demo

## end-to-end benchmark: simulator firehose -> worker -> publisher -> Redis
bench: venv
	$(PY) bench/bench_e2e.py

## market-data soak: all types, 50 symbols per exchange, RSS/FD/connection figures
bench-md: venv
	$(PY) bench/bench_md.py

## fault-injection table (the long version; the test suite runs the short one)
faults: venv
	$(PY) bench/faults.py --long

clean:
	rm -rf $(VENV) .pytest_cache var
