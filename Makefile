# cifllm — every target installs what it needs (`make setup` is idempotent).
# CPU machines: torch is pinned to the 2.13.0 CPU wheel through constraints/cpu.txt.
# GPU machines: see README "GPU install" (install the CUDA wheel of torch 2.13.0 first, then `make setup`).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CIFLLM := $(VENV)/bin/cifllm
EXTRAS ?= train,deepspeed,dev
export CIFLLM_DATA_DIR ?= $(abspath ../shared/data)
CORPUS ?= data/corpus
export TORCH_EXTENSIONS_DIR ?= $(abspath .torch_extensions)
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-slow lint format data data-smoke tokenizer tokenizer-check bench-prep demo clean help

help:
	@echo "make demo        the main job on built-in defaults (small corpus from CIFLLM_DATA_DIR -> tokenizer check -> ...)"
	@echo "make test        install and run the default test suite (CPU, < 10 min)"
	@echo "make setup       create $(VENV) with torch 2.13.0 CPU + cifllm[$(EXTRAS)]"
	@echo "make data        build the pooled corpus from CIFLLM_DATA_DIR=$(CIFLLM_DATA_DIR) into $(CORPUS)"
	@echo "make tokenizer   save tokenizer/cif-v1 and check the round trip on $(CORPUS)"
	@echo "make lint        ruff"

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints/cpu.txt torch==2.13.0
	$(PIP) install -q -c constraints/cpu.txt -e ".[$(EXTRAS)]"
	@touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check cifllm tests benchmarks data_prep tokenizer train eval

format: setup
	$(VENV)/bin/ruff format cifllm tests benchmarks

data: setup
	$(CIFLLM) data --config data_prep/pooled.yaml out=$(CORPUS)

# a quick corpus from the first rows of every source (used by the demo)
data-smoke: setup
	$(CIFLLM) data --config data_prep/pooled.yaml out=data/corpus-smoke limit_per_file=40 --no-progress

tokenizer: setup
	$(CIFLLM) tokenizer --out tokenizer/cif-v1 $(if $(wildcard $(CORPUS)/manifest.json),--corpus $(CORPUS))

bench-prep: setup
	$(PY) benchmarks/bench_prep.py --out benchmarks/results/prep_cpu.json

# The main job on built-in defaults: a small real corpus -> tokenizer check -> tiny model pretrained for a few hundred
# steps on CPU -> samples (de novo + a few compositions) -> checks, uniqueness, novelty against the corpus -> report.
DEMO_STEPS ?= 200
DEMO_SAMPLES ?= 8
demo: setup data-smoke
	$(CIFLLM) tokenizer --out tokenizer/cif-v1 --corpus data/corpus-smoke
	$(MAKE) --no-print-directory pretrain CORPUS=data/corpus-smoke OUT=runs/demo-tiny STEPS=$(DEMO_STEPS) PRETRAIN_ARGS="eval_steps=100 save_steps=100"
	$(CIFLLM) sample --config eval/sample.yaml model=runs/demo-tiny/model out=runs/demo-samples prompt_file=eval/demo_prompts.txt num_samples=$(DEMO_SAMPLES) max_new_tokens=768
	$(CIFLLM) evaluate --config eval/eval.yaml samples=runs/demo-samples reference=data/corpus-smoke
	@echo "demo done: CIFs in runs/demo-samples/cifs, metrics in runs/demo-samples/eval/metrics.json, report runs/demo-samples/eval/report.md"

clean:
	rm -rf runs results data/corpus-smoke .pytest_cache .ruff_cache

# stage fragments (pretraining, sampling/evaluation)
-include train/pretrain.mk
-include eval/sample.mk

# discovery benchmark: splits from the corpus, then every task with the pretrained tiny model at a small CPU budget
BENCH_MODEL ?= runs/pretrain-tiny/model
BENCH_ARGS ?= n_prompts=8 n_samples=2 n_denovo=16 max_new_tokens=768
.PHONY: splits bench
splits: setup
	$(CIFLLM) split --corpus $(CORPUS) --out data/tasks

bench: setup
	test -f data/tasks/id_random/manifest.json || $(MAKE) splits
	$(CIFLLM) bench $(if $(wildcard $(BENCH_MODEL)/config.json),--model $(BENCH_MODEL)) splits=data/tasks corpus=$(CORPUS) out=results $(BENCH_ARGS)
