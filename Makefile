# Two commands on a fresh machine (python3 >= 3.11 with venv):
#   make demo   installs streamdiff and diffs real MaxText checkpoints shipped in tests/data
#   make test   installs streamdiff with its test dependencies and runs lint (ruff, mypy --strict) + the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

MAXTEXT := tests/data/maxtext
SRC := streamdiff tests $(wildcard bench)

.PHONY: install install-test demo test lint format bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[test]'
	touch $@ $(VENV)/.runtime

install: $(VENV)/.runtime
install-test: $(VENV)/.test

demo: install
	@echo "== 1. same run, two seeds (MaxText Linen, scanned): 36 of the 39 arrays differ (the 3 counters do not); the 40th leaf is an empty optax state"
	@$(VENV)/bin/streamdiff $(MAXTEXT)/v024_linen_scan/checkpoints $(MAXTEXT)/v024_linen_scan_seed1/checkpoints --atol 1e-6 --rtol 1e-5; echo "(exit code $$?)"
	@echo
	@echo "== 2. one optimizer step apart (step 0 vs step 1 of one run: --step given twice), with a per-subtree --stat"
	@$(VENV)/bin/streamdiff $(MAXTEXT)/v024_linen_scan/checkpoints $(MAXTEXT)/v024_linen_scan/checkpoints --step 0 --step 1 --atol 1e-6 --rtol 1e-5 --stat; echo "(exit code $$?)"
	@echo
	@echo "== 3. a checkpoint against itself: identical, exit 0"
	@$(VENV)/bin/streamdiff $(MAXTEXT)/v024_nnx_scan/checkpoints $(MAXTEXT)/v024_nnx_scan/checkpoints; echo "(exit code $$?)"
	@echo
	@echo "== 4. Linen vs its conversion to NNX by MaxText's converter: layouts detected, mapped, equal in every leaf"
	@$(VENV)/bin/streamdiff $(MAXTEXT)/v024_linen_scan/checkpoints $(MAXTEXT)/conv_pr283f88b_linen_scan_to_nnx/items; echo "(exit code $$?)"
	@echo
	@echo "== 5. structure only (no array data read): MaxText Linen vs native NNX, unscanned: params and optimizer state pair up; NNX rng state exists only in B"
	@$(VENV)/bin/streamdiff $(MAXTEXT)/v024_linen_noscan/checkpoints $(MAXTEXT)/pr283f88b_nnx_noscan/checkpoints --structure-only; echo "(exit code $$?)"

lint: install-test
	$(PY) -m ruff check $(SRC)
	$(PY) -m ruff format --check $(SRC)
	$(PY) -m mypy

format: install-test
	$(PY) -m ruff check --fix $(SRC)
	$(PY) -m ruff format $(SRC)

test: install-test lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info

# Benchmarks (bench/run.py): generates MaxText-like pairs with orbax on first use (~14 GB in
# bench/out), then prints one table and appends it to bench/RESULTS.md. About 10 minutes.
bench: install-test
	$(PY) bench/run.py
