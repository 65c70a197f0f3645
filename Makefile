# verinfer: one set-up, shared by every target. Idempotent: a second run only
# checks stamps. Needs python3 (3.11+), node/npm and make; nothing else.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.verinfer-setup
# The CPU build of torch that lies on this machine's disk; installed first so
# the range in pyproject.toml is already met and no CUDA build is pulled.
TORCH   := torch==2.13.0

.PHONY: setup serve demo lint test test-fast bench clean

setup: $(STAMP) node_modules/.package-lock.json

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

serve: setup
	$(BIN)/verinfer serve

demo: setup
	$(BIN)/verinfer demo

# Rules in pyproject.toml ([tool.ruff.lint]); `$(BIN)/ruff check --fix .` fixes import order.
lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Unit and in-process tests only (no EZKL, chain or server process).
test-fast: setup
	$(BIN)/python -m pytest -m 'not ezkl and not chain and not e2e' $(PYTEST_ARGS)

# Benchmarks print figures and write bench/results/*.json (minutes; never run by CI).
bench: setup
	$(BIN)/python -m bench.prove
	$(BIN)/python -m bench.http_load
	$(BIN)/python -m bench.gas
	$(BIN)/python -m bench.audit

clean:
	rm -rf $(VENV) node_modules .pytest_cache
