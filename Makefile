# labkit: two commands do all the set-up.
#   make demo   create or reuse .venv, install labkit, run the main job on the default video
#   make test   create or reuse .venv, install labkit with its test tools, run pytest
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.labkit-installed
PYTEST_ARGS ?=

.PHONY: demo test venv bench clean-runs

venv: $(STAMP)

# Re-install only when the dependency list changes; the editable install tracks the code itself.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/labkit demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/attention.py

clean-runs:
	rm -rf runs
