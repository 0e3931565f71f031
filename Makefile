# `make demo` and `make test` work on a fresh clone: both create the virtualenv when it is missing.
PY ?= python3
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs/tiny

.PHONY: setup lock wheels-gpu test lint demo pipeline pretrain sft rm ppo dpo results bench bench-gpu synth clean-runs
RECIPE ?= recipes/tiny/pipeline.yaml

setup: $(STAMP)

# Installs exactly the versions in requirements.lock (pip-tools; `make lock` refreshes it), without resolving.
# torch is kept out of the lock and installed first: pip on these machines serves a local CPU wheel for
# TORCH, where a resolver that ignores pip's configuration would fetch a 3 GB CUDA build.
LOCK := requirements.lock
TORCH ?= torch==2.13.0
$(STAMP): pyproject.toml $(LOCK)
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH)'
	$(BIN)/pip install -q --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

# Re-resolves pyproject.toml's ranges to their newest releases; commit the lock with what it changed.
lock: setup
	$(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile -q --upgrade --extra dev --unsafe-package torch --strip-extras --no-emit-index-url \
		--no-emit-find-links --no-emit-trusted-host --annotation-style line -o $(LOCK) pyproject.toml

# The GPU machines have no network, Python 3.12 and their own torch: the lock's other packages travel there as
# wheels in .whl/ (a cp312 build where one exists, else built here from the sdist) and install there with
#   pip install --no-index --no-deps .whl/*.whl && pip install --no-deps -e . && pip check
GPU_PLATFORMS := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
wheels-gpu: setup
	mkdir -p .whl
	grep -E '^[A-Za-z0-9_.-]+==' $(LOCK) | cut -d' ' -f1 | while read -r requirement; do \
		$(BIN)/pip download -q --no-deps --only-binary=:all: $(GPU_PLATFORMS) -d .whl "$$requirement" 2>/dev/null \
		|| $(BIN)/pip wheel -q --no-deps -w .whl "$$requirement" || exit 1; done

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=1800 tests

lint: setup
	$(BIN)/ruff check align tests bench notebooks
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

# Multi-seed studies (tens of minutes): JSON under results/, quoted in the README and issues. Outputs that
# exist under $(RUNS)/study and $(RUNS)/capability are reused.
CHAIN_POLICIES := ppo ppo_gold dpo sft_chosen
results: setup
	test -d $(RUNS)/rm || $(MAKE) demo
	$(BIN)/python bench/study_capability.py --runs $(RUNS) --out results/capability.json
	$(BIN)/python bench/study_alignment.py --runs $(RUNS) --out results/alignment.json
	$(BIN)/python bench/study_chains.py --split dev --chains 0 1 --policies ppo ppo_beta0.4 rounds
	$(BIN)/python bench/study_chains.py --split eval --policies $(CHAIN_POLICIES)
	$(BIN)/python bench/study_chains.py --split eval --chains 0 1 3 4 --policies ppo rounds \
		--out results/chains_eval_rounds.json
	$(BIN)/python bench/study_chains.py --split eval --chains 0 1 --policies ppo rounds rounds_sft_samples \
		--out results/chains_eval_control.json
	$(BIN)/python bench/study_chains.py --split fresh --policies $(CHAIN_POLICIES)
	$(BIN)/python bench/study_guards.py --runs $(RUNS) --out results/guards.json
	$(BIN)/python bench/gpt2_chain.py --size gpt2 --out results/gpt2_chain.json
	$(BIN)/python bench/quantize_int8.py --runs $(RUNS) --out results/quantize_int8.json

# Speed and memory against plain transformers in the same run, one JSON line each (also kept in results/).
BENCH := set -o pipefail; $(BIN)/python
bench: setup
	test -d $(RUNS)/rm || $(MAKE) demo
	rm -f results/bench-cpu.jsonl
	$(BENCH) bench/rollout.py --size tiny | tee -a results/bench-cpu.jsonl
	$(BENCH) bench/rollout.py --size micro | tee -a results/bench-cpu.jsonl
	$(BENCH) bench/rollout.py --size tiny --lora | tee -a results/bench-cpu.jsonl
	$(BENCH) bench/ppo_step.py --runs $(RUNS) | tee -a results/bench-cpu.jsonl
	$(BENCH) bench/memory.py --size gpt2 | tee -a results/bench-cpu.jsonl
	$(BENCH) bench/train_throughput.py --model $(RUNS)/pretrain | tee -a results/bench-cpu.jsonl

# The GPU set (one command, under 10 minutes on an H100); random GPT-2 weights, no hub needed.
bench-gpu: setup
	rm -f results/bench-gpu.jsonl
	$(BENCH) bench/rollout.py --device cuda --size gpt2 --batch 64 --new-tokens 128 | tee -a results/bench-gpu.jsonl
	$(BENCH) bench/rollout.py --device cuda --size gpt2 --batch 256 --new-tokens 128 | tee -a results/bench-gpu.jsonl
	$(BENCH) bench/memory.py --device cuda --size gpt2 | tee -a results/bench-gpu.jsonl
	$(BENCH) bench/train_throughput.py --device cuda --size gpt2-medium --steps 30 --set max_length=1024 \
		--set train.batch_size=16 --set train.gradient_checkpointing=false | tee -a results/bench-gpu.jsonl

clean-runs:
	rm -rf $(RUNS)
