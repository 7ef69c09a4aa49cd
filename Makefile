# One command to run it, one to test it:  make run  /  make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON := $(BIN)/python

.PHONY: setup plugins run test bench lint clean

# Only the stdlib's venv is asked of the system Python (pip may not install into it: PEP 668).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/uv pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed  ## install the package, its tests' tools and Meltano into .venv

.meltano/.installed: $(VENV)/.installed meltano.yml
	$(BIN)/meltano install
	touch $@

plugins: .meltano/.installed  ## install meltano.yml's plugins (tap, target-postgres, target-duckdb, dbt-postgres, dbt-duckdb) into .meltano

run: setup plugins  ## the listener on :8080, replicating into output/vero.duckdb every 15 s; Ctrl-C stops
	scripts/quickstart.sh

test: setup plugins  ## the whole suite, end-to-end loads into PostgreSQL included
	$(BIN)/pytest -ra

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/bench_listener.py
	$(BIN)/python bench/bench_tap.py

clean:
	rm -rf $(VENV) .meltano
