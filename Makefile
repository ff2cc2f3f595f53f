# The two set-up commands: `make train` and `make test`. Both install into .venv first when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install train test test-fast lint format bench clean

# Re-installs only when pyproject.toml or constraints.txt changed since the last install: a no-op otherwise.
# constraints.txt holds the exact versions we test with (the local torch builds among them); pyproject.toml only
# states the ranges users may install.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)  ## the default synthetic run on CPU; extra Hydra overrides in ARGS="..."
	$(PY) -m hrn.train $(ARGS)

test: $(STAMP)  ## the whole suite, slow tests included
	$(PY) -m pytest -q -n auto --durations=10

test-fast: $(STAMP)  ## skips tests marked slow
	$(PY) -m pytest -q -n auto -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check hrn tests
	$(VENV)/bin/ruff format --check hrn tests

format: $(STAMP)
	$(VENV)/bin/ruff check --fix hrn tests
	$(VENV)/bin/ruff format hrn tests

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
