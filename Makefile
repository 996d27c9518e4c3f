# Two commands on a fresh machine: `make run` and `make test`. Both set up everything first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ATTUNE := $(VENV)/bin/attune
DATA_DIR ?= attune-data
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup model run browser test lint clean

# torch goes in first and pinned: the CPU wheel, so nothing pulls the CUDA stack.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

model: setup
	$(ATTUNE) provision --data-dir $(DATA_DIR)

# The web app on http://127.0.0.1:7860; on an empty database it creates `demo` and `operator`
# and prints their passwords once.
run: model
	$(ATTUNE) serve --data-dir $(DATA_DIR) --demo-accounts

# The browser test drives Debian's Chromium, never a downloaded one. If it cannot be installed,
# the rest of the suite still runs and that test fails, saying why (it is never skipped).
browser:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "WARNING: could not install chromium: tests/test_ui_browser.py will fail"

test: setup browser
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
