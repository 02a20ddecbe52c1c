# The README's commands. Each creates or reuses .venv and installs the project from this repo.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DAGSTER_HOME ?= $(CURDIR)/data/dagster_home

# Every dependency, direct and transitive, at the version and with the hashes of the lock that
# `make lock` writes from pyproject.toml: locks/dev.txt here (runtime, dev and the build backend),
# locks/image.txt in the Dockerfile (runtime, the k8s extra and the build backend).
LOCK := locks/dev.txt
IMAGE_LOCK := locks/image.txt
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
# pip-compile's options for both locks. No index URL or find-links is written into them: those are
# the machine's pip configuration, and the hashes are the same wherever the files come from.
PIP_COMPILE := $(BIN)/pip-compile --quiet --no-config --generate-hashes --allow-unsafe \
	--all-build-deps --strip-extras --no-emit-index-url --no-emit-find-links
# `make lock LOCK_ARGS=--upgrade` moves the unpinned (transitive) dependencies to their newest
# versions; without it pip-compile keeps the lock's versions and changes only what pyproject.toml
# asks for.
LOCK_ARGS ?=

.PHONY: install demo test lint check-defs format ui lock

# With --require-hashes pip refuses any file whose hash is not in the lock. --no-deps: the lock is
# the whole set, and the venv's first pip (23.2 with Python 3.11.7) rejects a dependency with
# extras (gql[requests]) in hash-checking mode; `pip check` then fails if the lock left out any
# dependency of the project or of a locked package. The project itself is built by the locked
# setuptools (no build isolation, which would fetch an unpinned one).
$(INSTALLED): pyproject.toml $(LOCK)
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --no-deps --require-hashes -r $(LOCK)
	$(PIP) install --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(INSTALLED)

install: $(INSTALLED)

# Rewrites both locks from pyproject.toml. The image's lock first: the dev lock is constrained to
# it, so the tests run the versions the image ships.
lock: $(INSTALLED)
	$(PIP_COMPILE) $(LOCK_ARGS) --extra k8s --output-file $(IMAGE_LOCK) pyproject.toml
	$(PIP_COMPILE) $(LOCK_ARGS) --extra dev --constraint $(IMAGE_LOCK) --output-file $(LOCK) \
		pyproject.toml

# The embedded default end to end: simulator, fresh SQLite platform under ./data, full sync.
demo: $(INSTALLED)
	$(BIN)/sync-assets demo

# The tests' scratch folders (platform databases, Dagster homes) in memory where the machine has
# a /dev/shm of at least 4 GiB free: the platform's SQLite databases, and Dagster's own SQLite
# storage in the tests' instance_for_test homes, which opens, commits and closes a database for
# every event (the project's instance holds them open: sync_assets/runs/held_sqlite.py), each
# close a checkpoint and an fsync on a disk. Elsewhere TMPDIR as it is.
SHM_TMPDIR := $(shell avail=$$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print $$4}'); \
	[ "$${avail:-0}" -ge 4194304 ] && echo /dev/shm)
TEST_TMPDIR := $(or $(SHM_TMPDIR),$(TMPDIR),/tmp)

test: $(INSTALLED) lint check-defs
	TMPDIR=$(TEST_TMPDIR) $(BIN)/pytest -n auto --dist loadgroup

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
