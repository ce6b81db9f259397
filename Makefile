# Set-up is part of every target: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
# The CPU build is enough for tests and CPU demos. On a CUDA machine, pick the build for it,
# e.g. make serve PIP_TORCH_INDEX=https://download.pytorch.org/whl/cu130 (the index the worker
# image uses; the cu124 index ends at torch 2.6). Asking for another spec or index later
# re-installs torch: its stamp is keyed on both.
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_INDEX ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_KEY := $(shell printf '%s|%s' '$(TORCH_SPEC)' '$(PIP_TORCH_INDEX)' | cksum | cut -d' ' -f1)
TORCH_STAMP := $(VENV)/.torch-$(TORCH_KEY)

.PHONY: setup browser compose serve test lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Uninstalled first: pip counts an installed 2.13.0+cpu as satisfying torch==2.13.0.
$(TORCH_STAMP): | $(BIN)/python
	rm -f $(VENV)/.torch-*
	$(BIN)/python -m pip uninstall -q -y torch
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(PIP_TORCH_INDEX),--index-url $(PIP_TORCH_INDEX))
	touch $(TORCH_STAMP)

$(STAMP): pyproject.toml client/pyproject.toml $(TORCH_STAMP)
	$(BIN)/python -m pip install -q -e ".[dev]" -e client
	touch $(STAMP)

setup: $(STAMP)

# The web page's browser test drives Debian's chromium: installed here where apt-get can (CI runs
# as root); where it cannot, that test skips and says why.
browser:
	-@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "no chromium could be installed: the web page's browser test will be skipped"

# The compose file's check runs Debian's docker-compose (`config` needs no Docker engine):
# installed here where apt-get can; where it cannot, that test skips and says why.
compose:
	-@command -v docker-compose >/dev/null 2>&1 || \
	  (command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) || \
	  echo "no docker-compose could be installed: the compose file's config test will be skipped"

serve: $(STAMP)
	$(BIN)/cascade serve

# Test files run in parallel processes (pytest-xdist), one file per process at a time so a
# module's Redis, servers and browser are started once; many tests wait on workers and servers
# they start, so more processes than cores still helps. TEST_WORKERS=0 runs them in this one.
TEST_WORKERS ?= 3

test: $(STAMP) browser compose
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/cascade bench --out runs/bench
