# Set up a virtual environment from the project's own files, then run the quickstart or the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CILEARN_DATA ?= $(abspath ../shared/data)
export CILEARN_DATA

.PHONY: setup demo test lint docs bench clean

setup: $(VENV)/.installed

# torch is pinned first so that pip never replaces it with a different (multi-GB CUDA) build.  The optional
# loggers (tensorboard, wandb, mlflow) and Ray are installed too, so that their tests (and cilearn sweep --backend
# ray's) run.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,tensorboard,wandb,mlflow,ray]"
	touch $@

demo: setup
	$(BIN)/cilearn run configs/quickstart.yaml

# Two worker processes, each test file on one of them (module fixtures such as the sweep's runs are built once);
# most tests run one thread (tests/conftest.py), so two workers use both cores of a 2-core CI machine.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check .

$(VENV)/.docs-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $@

# The documentation site into site/; --strict: a broken link or a docstring mkdocstrings cannot read fails.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache site
