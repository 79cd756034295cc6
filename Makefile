# Quick start: `make demo` (install + embedded demo + report), `make test` (what CI runs).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# every package at the exact version the tests pass with (make lock refreshes it)
LOCK := requirements/lock.txt
CORES ?= all
export HF_HUB_OFFLINE := 1

.PHONY: install lock demo test test-quick test-slurm lint clean

install: $(VENV)/.installed

$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $@

# Resolve pyproject's ranges (with the dev extra) and requirements/torch.in anew, for every
# platform, into the lock, and mirror it in the conda environment; then `make test`.
lock: install
	$(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
		--extra dev pyproject.toml requirements/torch.in -o $(LOCK)
	$(BIN)/python requirements/conda_env.py $(LOCK) envs/vlprobe.yaml

demo: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml
	$(BIN)/snakemake --cores 1 --configfile config/demo.yaml --report results/report.html

lint: install
	$(BIN)/ruff check src tests workflow requirements
	$(BIN)/ruff format --check src tests workflow requirements
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --configfile config/demo.yaml

test: lint
	$(BIN)/pytest -ra

# the edit-test loop: without the slow tests (make test runs them all)
test-quick: install
	$(BIN)/pytest -ra -m "not slow"

# The demo on a throwaway single-node SLURM cluster (installs slurm-wlm and munge; needs root).
test-slurm: install
	.ci/slurm.sh run -- $(BIN)/pytest -ra -m slurm tests/slurm

clean:
	rm -rf results resources logs benchmarks/out .snakemake
