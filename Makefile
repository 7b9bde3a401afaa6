# The project's everyday commands (README.md): each installs what it needs first.
#   make run     install, then start the daemon on its built-in defaults (./var/)
#   make test    install (with the test tools and system packages), then run every test
#   make lint    ruff, as the tests check it
#   make bench   the CPU benchmarks, each printing JSON (bench/README.md)
#   make clean   build and test leftovers (never ./var/, which holds your jobs and images)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install -q -c constraints.txt
PYTEST_ARGS ?=
# Three workers, a test file each at a time (its module fixtures, such as a live server,
# start once), the files with multi-process tests first (tests/conftest.py) and kept in
# that order: much of the suite waits on processes and servers, so three share two cores.
TEST_WORKERS ?= 3

.PHONY: run test lint bench clean

run: $(VENV)/.installed
	$(BIN)/alice-spool serve

test: $(VENV)/.installed-test
	@scripts/install-system-packages chromium systemd postgresql
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed-test
	$(BIN)/python bench/store.py
	$(BIN)/python bench/inbox.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/runner.py
	$(BIN)/python bench/downloads.py
	$(BIN)/python bench/a1111.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .hypothesis test-artifacts
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

$(BIN)/python:
	@scripts/install-system-packages
	$(PYTHON) -m venv $(VENV)

# Reinstalled when the package's metadata or pins change.
$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py constraints.txt
	$(PIP_INSTALL) -e .
	@touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml setup.py constraints.txt
	$(PIP_INSTALL) -e '.[test]'
	@touch $@ $(VENV)/.installed
