# One command to run it, one to test it:  make run  /  make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON := $(BIN)/python
# Compile .pyc at install time (uv does not by default): otherwise every run under
# PYTHONDONTWRITEBYTECODE, or from a venv its user cannot write, compiles every module
# it imports again, seconds per `meltano run` (docs/load-path.md).
export UV_COMPILE_BYTECODE := 1

.PHONY: setup plugins system-packages run test bench lint clean

# Only the stdlib's venv is asked of the system Python (pip may not install into it: PEP 668).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/uv pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed  ## install the package, its tests' tools and Meltano into .venv

.meltano/.installed: $(VENV)/.installed meltano.yml pyproject.toml loader/pyproject.toml
	$(BIN)/meltano install
	touch $@

plugins: .meltano/.installed  ## install meltano.yml's plugins (tap, target-postgres, target-duckdb, dbt-postgres, dbt-duckdb) into .meltano

# Debian packages the tests drive: HAProxy (in front of two listeners) and wrk (benches).
# Installed with apt-get when missing and root may; otherwise those tests say why they skip.
SYSTEM_PACKAGES := haproxy wrk
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q $$missing >/dev/null || \
	      { apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; }; \
	  else echo "not root: install $$missing with apt-get for the tests that need them"; fi; \
	fi

run: setup plugins  ## the listener on :8080, replicating into output/vero.duckdb every 15 s; Ctrl-C stops
	scripts/quickstart.sh

test: setup plugins system-packages  ## the whole suite: real listeners, Meltano, PostgreSQL, dbt, a NATS cluster, HAProxy
	$(BIN)/pytest -ra

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup system-packages
	$(BIN)/python bench/bench_listener.py
	$(BIN)/python bench/bench_tap.py
	$(BIN)/python bench/bench_jetstream.py
	$(BIN)/python bench/bench_flood.py

clean:
	rm -rf $(VENV) .meltano
