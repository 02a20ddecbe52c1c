# The README's commands. Each creates or reuses .venv and installs the project from this repo.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DAGSTER_HOME ?= $(CURDIR)/data/dagster_home

.PHONY: install demo test lint check-defs format ui

$(INSTALLED): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

# The embedded default end to end: simulator, fresh SQLite platform under ./data, full sync.
demo: $(INSTALLED)
	$(BIN)/sync-assets demo

test: $(INSTALLED) lint check-defs
	$(BIN)/pytest -n auto

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The code location loads as Dagster (and `dg`) will load it: every definition, resource and setting.
check-defs: $(INSTALLED)
	$(BIN)/dg check defs

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The Dagster UI (and daemon) on the local instance at $(DAGSTER_HOME), through `dg dev`.
ui: $(INSTALLED)
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dg dev
