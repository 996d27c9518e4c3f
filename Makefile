# Two commands on a fresh machine: `make run` and `make test`. Both set up everything first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ATTUNE := $(VENV)/bin/attune
DATA_DIR ?= attune-data
STAMP := $(VENV)/.installed

.PHONY: setup model run test lint clean

# torch goes in first and pinned: the CPU wheel, so nothing pulls the CUDA stack.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

model: setup
	$(ATTUNE) provision --data-dir $(DATA_DIR)

run: model
	$(ATTUNE) user add demo --if-missing --data-dir $(DATA_DIR)
	$(ATTUNE) chat --user demo --data-dir $(DATA_DIR)

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
