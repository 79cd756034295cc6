# Quick start: `make demo` (install + embedded demo + report), `make test` (what CI runs).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# This machine's pip cap and local wheels; on a GPU box pip picks the matching CUDA build.
TORCH ?= torch==2.14.1 torchvision==0.29.1
CORES ?= all
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-slurm lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml
	$(BIN)/snakemake --cores 1 --configfile config/demo.yaml --report results/report.html

lint: install
	$(BIN)/ruff check src tests workflow
	$(BIN)/ruff format --check src tests workflow
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --configfile config/demo.yaml

test: lint
	$(BIN)/pytest -ra

# The demo on a throwaway single-node SLURM cluster (installs slurm-wlm and munge; needs root).
test-slurm: install
	.ci/slurm.sh run -- $(BIN)/pytest -ra -m slurm tests/slurm

clean:
	rm -rf results resources logs benchmarks/out .snakemake
