# Two commands do everything on a fresh machine: `make train` (main job) and `make test` (test suite).
# The venv is created once; torch is pinned to the CPU wheel first so no CUDA build is pulled here.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: train test test-fast lint venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(ARGS)

# Everything but the tests marked slow (those that launch processes): the loop for a change in progress.
test-fast: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
