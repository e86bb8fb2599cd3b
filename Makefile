# Two commands: `make run` (the main job) and `make test` (the test suite).
# Each sets up what it needs: a virtual environment in .venv with torch==2.13.0 pinned
# (a CPU build here; an unpinned torch would pull several GB of CUDA packages), and this
# package in editable mode.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY ?= true
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: run test setup lint clean benchmark regress docs

$(BIN)/bench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	# torch-fidelity, the second FID feature path (tests/test_fid.py holds ours against it):
	# without its dependencies, since PyPI's torchvision is a CUDA build that does not load
	# with the CPU torch (bench.science.fid_tfidelity loads its Inception module alone)
	$(BIN)/pip install --quiet --no-deps torch-fidelity==0.4.0
	# clean-fid (MIT), whose PIL resize tests/test_fid_resize.py holds the "clean" resize
	# against bit for bit: only cleanfid.resize is imported (torch, numpy, PIL), so no deps
	$(BIN)/pip install --quiet --no-deps clean-fid==0.1.35
	touch $(BIN)/bench

setup: $(BIN)/bench

run: setup
	$(BIN)/bench run --method interflow --dataset miniboone

test: setup
	$(BIN)/ruff check bench methods datasets tests benchmarks experiments docs
	$(BIN)/lint-imports pyproject.toml
	$(BIN)/mkdocs build --strict --quiet --site-dir "$${TMPDIR:-/tmp}/bench-site"
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check bench methods datasets tests benchmarks experiments docs
	$(BIN)/lint-imports pyproject.toml

clean:
	rm -rf $(VENV) results/mlflow.db results/artifacts .pytest_cache

# pytest-benchmark: one training step of each method; prints the CNF / InterFlow ratio.
benchmark: setup
	$(BIN)/pytest benchmarks -p no:xdist --benchmark-only -s

# Performance (ratios against bare references) and quality (test NLL bands) against the
# committed baseline results/benchmarks/baseline.json; exit 1 on a regression.
# Re-baseline deliberately: bench regress --rebaseline (GPU: --full --device cuda).
regress: setup
	$(BIN)/bench regress --no-record

# The documentation site (docs/, mkdocs.yml): served at http://127.0.0.1:8000 while editing;
# `make test` builds it with --strict. The measurement pages are generated from results/.
docs: setup
	$(BIN)/python docs/gen_measurements.py
	$(BIN)/mkdocs serve
