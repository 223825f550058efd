# Quick start: `make train` (set up + the default training run), `make test` (set up + the test suite).
# Both build .venv from nothing when no virtual environment is active (scripts/setup.sh).
VENV_PY := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV)/bin/python,.venv/bin/python)

.PHONY: setup train test test-fast test-numerics lint

setup:
	bash scripts/setup.sh

train: setup
	$(VENV_PY) train.py $(ARGS)

# The suite at torch's default thread count, then the float comparisons (marker `numerics`) again at
# 1 thread and at 2, skipping the count the first run used (PRM_TEST_THREADS if set, else torch's
# default, the number of physical cores): their verdict must not depend on how reductions are split.
# ARGS narrows both runs (paths, -k); the second always selects -m numerics. About a minute per pass
# on 2 cores.
NUMERICS_PASSES = default=$${PRM_TEST_THREADS:-$$($(VENV_PY) -c "import torch; print(torch.get_num_threads())")}; \
	for threads in 1 2; do \
		[ "$$threads" = "$$default" ] && continue; \
		echo "[test] the numerics tests again at $$threads thread(s): PRM_TEST_THREADS=$$threads"; \
		PRM_TEST_THREADS=$$threads $(VENV_PY) -m pytest -q $(ARGS) -m numerics || exit 1; \
	done

test: setup lint
	$(VENV_PY) -m pytest -q $(ARGS)
	@$(NUMERICS_PASSES)

test-numerics: setup
	@$(NUMERICS_PASSES)

# ruff lint + format check (configuration in pyproject.toml); `ruff format .` fixes the format.
lint: setup
	$(VENV_PY) -m ruff check .
	$(VENV_PY) -m ruff format --check .

test-fast: setup
	$(VENV_PY) -m pytest -q -m "not slow" $(ARGS)
