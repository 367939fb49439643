# Two commands do all the set-up:  `make run` (install + the whole pipeline on
# the embedded Shakespeare) and `make test` (install + the test suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: on the reference machine 2.13.0 is a local CPU build; a bare
# range would pull a multi-GB CUDA build. Elsewhere pip takes the platform's build.
TORCH  ?= torch==2.13.0

.PHONY: install install-dev run test test-slow lint bench gpu-check

$(BIN)/python:
	@echo "==> creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	@echo "==> installing $(TORCH) and gptpipe"
	$(BIN)/pip install --quiet --progress-bar off "$(TORCH)"
	$(BIN)/pip install --quiet --progress-bar off -e .

install-dev: $(BIN)/python
	@echo "==> installing $(TORCH) and gptpipe[dev]"
	$(BIN)/pip install --quiet --progress-bar off "$(TORCH)"
	$(BIN)/pip install --quiet --progress-bar off -e ".[dev]"

run: install
	@bash scripts/run_pipeline.sh

test: install-dev lint
	@echo "==> running the tests (the long end-to-end checks: make test-slow)"
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install-dev
	@echo "==> ruff check (rules in pyproject.toml)"
	$(BIN)/ruff check .

test-slow: install-dev
	@echo "==> running the long end-to-end checks"
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: install-dev
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# One command on a GPU machine: device, bf16, tokens/s, MFU, val loss, determinism
# (docs/more-machines.md); one line and exit 0 without CUDA.
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)
