# Two commands on a fresh machine: `make run` and `make test`. Both set up everything first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ATTUNE := $(VENV)/bin/attune
DATA_DIR ?= attune-data
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup model run browser test lint clean bench-env bench

# torch goes in first and pinned: the CPU wheel, so nothing pulls the CUDA stack.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,cluster]'
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

# The benchmarks' own environment: attune plus matplotlib for the plots and the peers it is
# measured against (bench/peers.txt: TRL's PPOTrainer, llama-cpp-python), which are not
# dependencies of attune. llama-cpp-python compiles llama.cpp from source (a few minutes), for
# AVX2/AVX-512 without AMX: its AMX kernels crash on these machines' virtual CPUs (they report
# AMX but a matmul segfaults), and -march=native would turn them on. Override LLAMA_CMAKE_ARGS
# on a CPU without AVX-512.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
$(BENCH_STAMP): pyproject.toml bench/peers.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BENCH_VENV)/bin/pip install -q --disable-pip-version-check \
		-e '.[dev,cluster,bench]' -r bench/peers.txt
	touch $(BENCH_STAMP)

bench-env: $(BENCH_STAMP)

# One benchmark: make bench NAME=serving [OPTIONS="--repeats 5"]
bench: bench-env
	$(BENCH_VENV)/bin/attune provision --data-dir $(DATA_DIR)
	$(BENCH_VENV)/bin/attune bench --data-dir $(DATA_DIR) $(NAME) $(OPTIONS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache
