# Two entry points, both from a clean clone (see README.md):
#   make quickstart   set up a venv and run the main job on the embedded defaults
#   make test         set up the test dependencies and run the whole test suite
# torch comes first and pinned so pip takes the CPU build on this kind of machine.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: quickstart test lint postgres chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

quickstart: $(VENV)/.runtime
	$(BIN)/cones2 quickstart --out cones2-quickstart

postgres:
	bash .ci/postgres.sh

chromium:
	bash .ci/chromium.sh

test: $(VENV)/.dev postgres chromium
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check .
