# `make demo` and `make test` work on a fresh clone: both create the virtualenv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs/tiny

.PHONY: setup test lint demo pipeline pretrain sft rm ppo dpo results synth clean-runs
RECIPE ?= recipes/tiny/pipeline.yaml

setup: $(STAMP)

# Reinstalls only when pyproject.toml changes, so repeated calls cost nothing.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=1800 tests

lint: setup
	$(BIN)/ruff check align tests bench
	$(BIN)/ruff format --check align tests bench

synth: setup
	$(BIN)/align data synth --output data/synthetic

demo: setup
	$(BIN)/python bench/demo_cpu.py --runs $(RUNS)

pipeline: setup
	$(BIN)/align pipeline --recipe $(RECIPE)

dpo: setup
	$(BIN)/align dpo --recipe recipes/tiny/dpo.yaml

pretrain: setup
	$(BIN)/align pretrain --recipe recipes/tiny/pretrain.yaml

sft: setup
	$(BIN)/align sft --recipe recipes/tiny/sft.yaml

rm: setup
	$(BIN)/align rm --recipe recipes/tiny/rm.yaml

ppo: setup
	$(BIN)/align ppo --recipe recipes/tiny/ppo.yaml

# Multi-seed studies (tens of minutes): JSON under results/, quoted in the README and issues.
results: setup
	test -d $(RUNS)/rm || $(MAKE) demo
	$(BIN)/python bench/study_alignment.py --runs $(RUNS) --out results/alignment.json

clean-runs:
	rm -rf $(RUNS)
