# verinfer: one set-up, shared by every target. Idempotent: a second run only
# checks stamps. Needs python3 (3.11+), node/npm and make; nothing else.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.verinfer-setup
# The CPU build of torch that lies on this machine's disk; installed first so
# the range in pyproject.toml is already met and no CUDA build is pulled.
TORCH   := torch==2.13.0

.PHONY: setup chromium wrk serve demo lint test test-fast bench vendor-js clean

setup: $(STAMP) node_modules/.package-lock.json

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

# Debian's chromium, for the status page's browser test (tests/server/test_status_page.py drives
# it with Playwright; no browser download). Only when absent; apt-get update when the lists are
# stale. Without apt-get (not Debian) it says so and that test fails (install a chromium).
APT := DEBIAN_FRONTEND=noninteractive $(shell [ "$$(id -u)" = 0 ] || echo sudo -E) apt-get
chromium:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null \
		|| { echo "no chromium and no apt-get: tests/server/test_status_page.py will fail (install a chromium)"; exit 0; }; \
		$(APT) install -y --no-install-recommends chromium \
		|| { $(APT) update && $(APT) install -y --no-install-recommends chromium; }; }

# Debian's wrk, the load generator of `python -m bench.workers --client wrk` (bench only, not
# tests); only when absent, as chromium above.
wrk:
	@command -v wrk >/dev/null || { command -v apt-get >/dev/null \
		|| { echo "no wrk and no apt-get: bench.workers --client wrk cannot run"; exit 0; }; \
		$(APT) install -y --no-install-recommends wrk \
		|| { $(APT) update && $(APT) install -y --no-install-recommends wrk; }; }

# The status page's secp256k1 and keccak (server/http/status.py, VENDORED): after changing their
# pins in package.json, copy them into the package; tests/server/test_status_page.py checks the copy.
vendor-js: setup
	$(BIN)/python -c 'from pathlib import Path; from server.http.status import vendor_js; vendor_js(Path("node_modules"), Path("server/http/static"))'

serve: setup
	$(BIN)/verinfer serve

demo: setup
	$(BIN)/verinfer demo

# Rules in pyproject.toml ([tool.ruff.lint]); `$(BIN)/ruff check --fix .` fixes import order.
lint: setup
	$(BIN)/ruff check .

test: setup chromium lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Unit and in-process tests only (no EZKL, chain or server process).
test-fast: setup
	$(BIN)/python -m pytest -m 'not ezkl and not chain and not e2e' $(PYTEST_ARGS)

# Benchmarks print figures and write bench/results/*.json (minutes; never run by CI).
bench: setup wrk
	$(BIN)/python -m bench.prove
	$(BIN)/python -m bench.http_load
	$(BIN)/python -m bench.workers --client $$(command -v wrk >/dev/null && echo wrk || echo python)
	$(BIN)/python -m bench.gas
	$(BIN)/python -m bench.audit

clean:
	rm -rf $(VENV) node_modules .pytest_cache
