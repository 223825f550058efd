# Quick start: `make train` (set up + the default training run), `make test` (set up + the test suite).
# Both build .venv from nothing when no virtual environment is active (scripts/setup.sh).
VENV_PY := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV)/bin/python,.venv/bin/python)

.PHONY: setup train test test-fast lint

setup:
	bash scripts/setup.sh

train: setup
	$(VENV_PY) train.py $(ARGS)

test: setup lint
	$(VENV_PY) -m pytest -q $(ARGS)

# ruff lint + format check (configuration in pyproject.toml); `ruff format .` fixes the format.
lint: setup
	$(VENV_PY) -m ruff check .
	$(VENV_PY) -m ruff format --check .

test-fast: setup
	$(VENV_PY) -m pytest -q -m "not slow" $(ARGS)
