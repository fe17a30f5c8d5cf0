# labkit: two commands do all the set-up.
#   make demo   create or reuse .venv, install labkit, run the main job on the default video
#   make test   create or reuse .venv, install labkit with its test tools, run pytest
#   make lint   ruff (lint, format check), mypy on labkit/, the import contracts: zero errors
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.labkit-installed
PYTEST_ARGS ?= -n auto --dist loadfile
CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test lint lint-imports venv bench bench-explorer chromium clean-runs

venv: $(STAMP)

# Re-install only when the dependency list changes; the editable install tracks the code itself.
# TORCH_INDEX (empty by default): a PyTorch wheel index that torch and torchvision come from, installed
# before labkit so that pip keeps them. pip's default torch on Linux is the CUDA build; on a machine
# without an NVIDIA GPU, `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` (new .venv).
TORCH_INDEX ?=
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(if $(TORCH_INDEX),$(PY) -m pip install torch torchvision --index-url $(TORCH_INDEX))
	$(PY) -m pip install -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/labkit demo

# The browser test (tests/test_explorer_browser.py) drives Debian's chromium with playwright;
# playwright's own browser download never runs. As root with apt (CI) chromium is installed once,
# a no-op when present; elsewhere the test skips with the reason (unless LABKIT_REQUIRE_BROWSER=1
# or CI is set, where it fails).
chromium:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	else \
		echo "note: $(CHROMIUM) is missing and this is not root with apt-get: the browser test will skip"; \
	fi

test: $(STAMP) chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# Every check runs even when an earlier one fails, so one run lists all the errors; the settings
# are in pyproject.toml ([tool.ruff], [tool.mypy], [tool.importlinter]). .pre-commit-config.yaml
# runs the same tools on each commit.
LINT_PATHS := labkit tests bench
lint: $(STAMP)
	@status=0; \
	echo "ruff check $(LINT_PATHS)"; $(VENV)/bin/ruff check $(LINT_PATHS) || status=1; \
	echo "ruff format --check $(LINT_PATHS)"; $(VENV)/bin/ruff format --check $(LINT_PATHS) || status=1; \
	echo "mypy labkit"; $(VENV)/bin/mypy labkit || status=1; \
	$(MAKE) --no-print-directory lint-imports || status=1; \
	exit $$status

# The layer contracts of docs/architecture.md, once pyproject.toml has them.
lint-imports:
	@if grep -q '^\[tool\.importlinter\]' pyproject.toml; then \
		echo "lint-imports"; $(VENV)/bin/lint-imports; \
	else \
		echo "lint-imports: no [tool.importlinter] contracts in pyproject.toml yet; skipped"; \
	fi

bench: $(STAMP)
	$(PY) bench/attention.py

bench-explorer: $(STAMP)
	$(PY) bench/explorer.py

clean-runs:
	rm -rf runs
