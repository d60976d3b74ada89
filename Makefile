# Targets a new user can guess: `make dev` runs the whole stack, `make test` checks everything.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstalled when pyproject.toml changes.
INSTALLED := $(VENV)/.installed

.PHONY: help install check-redis check-chromium dev test fuzz lint format typecheck bench clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(INSTALLED) ## create .venv and install the project with its dev tools
	@$(MAKE) --no-print-directory check-redis || true
	@$(MAKE) --no-print-directory check-chromium || true

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "luma-queue needs Python 3.11 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)."; \
	  echo "Run: make install PYTHON=python3.11"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { \
	  rm -rf $(VENV); \
	  echo; echo "Could not create $(VENV). On Debian/Ubuntu: sudo apt-get install python3-venv"; exit 1; }

# pip is quiet, so say why nothing else shows for a while.
$(INSTALLED): pyproject.toml | $(BIN)/python
	@echo "installing into $(VENV) (first run only, or after pyproject.toml changes; takes a minute)..."
	@$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# The tests and `make dev` run a real redis-server from PATH. As root with apt-get (CI, containers)
# it is installed; anywhere else we say how.
check-redis: ## make sure redis-server is installed
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "redis-server is missing: installing it with apt-get"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server; }; \
	  else \
	    echo "redis-server is not installed; the tests and 'make dev' need it:"; \
	    echo "  Debian/Ubuntu:  sudo apt-get install redis-server"; \
	    echo "  macOS:          brew install redis"; \
	    echo "('make dev' can also use a Redis you run yourself: set REDIS_URL.)"; \
	    exit 1; \
	  fi; \
	fi

# The dashboard's browser tests drive the system's Chromium (Playwright never downloads one), or
# the browser CHROMIUM names.
check-chromium: ## make sure chromium is installed, for the dashboard's browser tests
	@if [ -z "$$CHROMIUM" ] && ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "chromium is missing: installing it with apt-get"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }; \
	  else \
	    echo "chromium is not installed; the dashboard's browser tests need it:"; \
	    echo "  Debian:     sudo apt-get install chromium"; \
	    echo "  elsewhere:  set CHROMIUM to a Chromium or Chrome executable"; \
	    exit 1; \
	  fi; \
	fi

dev: $(INSTALLED) ## run redis, the simulator, the api and a worker here; Ctrl-C stops them
	$(BIN)/luma-queue dev

test: $(INSTALLED) check-redis check-chromium lint typecheck ## lint, type-check and run the whole test suite
	$(BIN)/pytest

# The suite fuzzes each operation with a few examples; this runs many more (FUZZ_EXAMPLES=N to choose).
FUZZ_EXAMPLES ?= 300
fuzz: $(INSTALLED) check-redis ## schemathesis: every API operation, FUZZ_EXAMPLES (300) examples each
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/api/test_fuzz.py -q

lint: $(INSTALLED) ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED) ## rewrite the code with ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(INSTALLED) ## mypy --strict on api, worker, shared, simulator and cli
	$(BIN)/mypy

bench: $(INSTALLED) check-redis ## run every bench/*.py (results: BENCHMARKS.md)
	@shopt -s nullglob; scripts=(bench/*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no benchmarks in bench/ yet"; exit 0; fi; \
	for script in "$${scripts[@]}"; do echo "== $$script"; $(BIN)/python "$$script" || exit 1; done

clean: ## remove caches, build files and the dev stack's data and logs (.run/); keeps .venv
	rm -rf .run build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
