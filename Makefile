# cifllm — every target installs what it needs (`make setup` is idempotent).
# torch: the tested version (constraints/cpu.txt) from TORCH_INDEX, by default PyTorch's CPU index (a CPU-only torch);
# where that index cannot be reached, from pip's own settings (constraints/install_torch.sh says so).
#   GPU:              make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
#   pip's settings:   make setup TORCH_INDEX=
#   your own torch:   make setup SYSTEM_TORCH=1   (.venv sees the interpreter's packages; torch>=2.6,<3 is kept)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CIFLLM := $(VENV)/bin/cifllm
EXTRAS ?= train,deepspeed,mlip,dev
export TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
SYSTEM_TORCH ?=
export CIFLLM_DATA_DIR ?= $(abspath ../shared/data)
CORPUS ?= data/corpus
export TORCH_EXTENSIONS_DIR ?= $(abspath .torch_extensions)
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-slow wheel-check lint format data data-smoke tokenizer tokenizer-check bench-prep demo demo-scratch clean help

help:
	@echo "make demo        the main job on built-in defaults: the default model samples crystals, checks them, writes a report"
	@echo "make test        install and run the default test suite (CPU, < 10 min)"
	@echo "make setup       create $(VENV) with torch 2.13.0 (CPU wheel from TORCH_INDEX=$(TORCH_INDEX)) + cifllm[$(EXTRAS)]"
	@echo "make wheel-check build the wheel, install it in a clean venv, run the CLI from outside the checkout"
	@echo "make data        build the pooled corpus from CIFLLM_DATA_DIR=$(CIFLLM_DATA_DIR) into $(CORPUS)"
	@echo "make tokenizer   save tokenizer/cif-v2 and check the round trip on $(CORPUS)"
	@echo "make lint        ruff"

$(VENV)/.installed: pyproject.toml constraints/cpu.txt constraints/install_torch.sh
	@test -x $(PY) || $(PYTHON) -m venv $(if $(SYSTEM_TORCH),--system-site-packages) $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(SYSTEM_TORCH),)
	TORCH_INDEX="$(TORCH_INDEX)" constraints/install_torch.sh $(PY)
	$(PIP) install -q -c constraints/cpu.txt -e ".[$(EXTRAS)]"
else
	$(PY) -c "import torch; print('using torch', torch.__version__, 'from', torch.__file__)"
	$(PIP) install -q -e ".[$(EXTRAS)]"
endif
	@touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m "slow or not slow"

# the built wheel in a clean venv, run from outside the checkout: data --list, split --help, demo, a tiny pretrain,
# generate (what CI runs after the tests; .ci/wheel_check.sh)
wheel-check: setup
	PY=$(PY) .ci/wheel_check.sh

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
	$(CIFLLM) tokenizer --out tokenizer/cif-v2 $(if $(wildcard $(CORPUS)/manifest.json),--corpus $(CORPUS))

bench-prep: setup
	$(PY) benchmarks/bench_prep.py --out benchmarks/results/prep_cpu.json

# The main job on built-in defaults: the shipped default model (cifllm/resources/default-model) samples crystals for
# a handful of compositions and de novo, the samples are checked (validity, uniqueness, novelty against data/corpus
# when it was built from CIFLLM_DATA_DIR), and CIFs + metrics.json + report land in runs/demo. Offline, CPU, minutes.
DEMO_ARGS ?=
demo: setup
	$(CIFLLM) demo out=runs/demo $(DEMO_ARGS)

# the former demo: a tiny model pretrained from scratch on a smoke corpus (exercises every stage; its samples are poor)
DEMO_STEPS ?= 200
DEMO_SAMPLES ?= 8
demo-scratch: setup data-smoke
	$(CIFLLM) tokenizer --out tokenizer/cif-v2 --corpus data/corpus-smoke
	$(MAKE) --no-print-directory pretrain CORPUS=data/corpus-smoke OUT=runs/demo-tiny STEPS=$(DEMO_STEPS) PRETRAIN_ARGS="eval_steps=100 save_steps=100"
	$(CIFLLM) sample --config eval/sample.yaml model=runs/demo-tiny/model out=runs/demo-samples prompt_file=eval/demo_prompts.txt num_samples=$(DEMO_SAMPLES) max_new_tokens=768
	$(CIFLLM) evaluate --config eval/eval.yaml samples=runs/demo-samples reference=data/corpus-smoke

clean:
	rm -rf runs results data/corpus-smoke .pytest_cache .ruff_cache

# stage fragments (pretraining, sampling/evaluation)
-include train/pretrain.mk
-include eval/sample.mk

# discovery benchmark: splits from the corpus (+ data/corpus-base: the corpus minus every task's test side, what the
# default model is pretrained on), then every task with the default model, its per-task LoRA adapters
# (runs/finetune-<task>/adapter, from `make finetune-all`) and the template baseline.
#   make bench-quick  the small CPU budget (8 CSP prompts x 2 samples, 16 de novo) into results/quick (minutes)
#   make bench        the full budget of issue 13 into $(BENCH_OUT): 200 CSP prompts (capped at a task's test-set size) x 20
#                     samples and 1,000 de novo samples per row; rows base, base-unconstrained (constraint ablation,
#                     when base is constrained), old-default = $(BENCH_OLD_MODEL) (when it exists), lora(+cond), template.
#                     Hours on a CPU; resumable: rerun the same command and finished rows are loaded ($(BENCH_OUT)/<task>/rows),
#                     a row killed midway continues from its journal (<row>.partial.jsonl).
#                     With $(VLLM_VENV) (make vllm-setup) the rows are sampled by vLLM in that venv first (stage=generate:
#                     it lacks the scoring packages), then scored here; BENCH_ENGINE=hf samples with transformers instead.
#                     max_new_tokens=2000: the constraint engine starts a CSP prompt only when its cell fits that token
#                     budget (at 1024, 30-90% of a task's first 200 test cells do; at 2000, 75-97%).
# BENCH_ARGS (key=value, see `cifllm bench --help`) are added last and win; BENCH_TASKS="id_random time_split" runs
# only those tasks, BENCH_ARGS='rows=[base,template]' only those rows (finished rows are still reported), so the
# full budget can be spread over several runs. BENCH_OUT (default benchmarks/results/bench) keeps the rows in the
# repository (commit the row records and the gzipped samples; *.jsonl there is ignored, *.jsonl.gz is read in its
# place; benchmarks/results/bench/README.md); `make card` reads it.
DEFAULT_MODEL := cifllm/resources/default-model
BENCH_MODEL ?= $(DEFAULT_MODEL)
BENCH_ARGS ?=
BENCH_TASKS ?=
BENCH_OUT ?= benchmarks/results/bench
BENCH_QUICK_ARGS ?= n_prompts=8 n_samples=2 n_denovo=16 max_new_tokens=768
BENCH_OLD_MODEL ?= runs/default-v1
BENCH_ENGINE ?= $(if $(wildcard $(VLLM_VENV)/bin/python),vllm,hf)
BENCH_FULL_ARGS ?= n_prompts=200 n_samples=20 n_denovo=1000 max_new_tokens=2000 constraint_ablation=true engine=$(BENCH_ENGINE) \
	$(if $(wildcard $(BENCH_OLD_MODEL)/config.json),'compare_models={old-default: $(BENCH_OLD_MODEL)}')
BENCH_CMD = bench $(foreach t,$(BENCH_TASKS),--task $(t)) $(if $(wildcard $(BENCH_MODEL)/config.json),--model $(BENCH_MODEL) --adapter 'runs/finetune-{task}/adapter') splits=data/tasks corpus=$(CORPUS)
TASKS := id_random elements_heldout prototypes_heldout tc_top kappa_top bandgap_top time_split
.PHONY: splits bench bench-quick finetune finetune-all rl scaling default-model default-eval card
splits: setup
	$(CIFLLM) split --corpus $(CORPUS) --out data/tasks --base-corpus data/corpus-base

bench-quick: setup
	test -f data/tasks/id_random/manifest.json || $(MAKE) splits
	$(CIFLLM) $(BENCH_CMD) out=results/quick $(BENCH_QUICK_ARGS) $(BENCH_ARGS)

bench: setup
	test -f data/tasks/id_random/manifest.json || $(MAKE) splits
ifeq ($(BENCH_ENGINE),vllm)
	$(VLLM_VENV)/bin/cifllm $(BENCH_CMD) out=$(BENCH_OUT) $(BENCH_FULL_ARGS) $(BENCH_ARGS) stage=generate
endif
	$(CIFLLM) $(BENCH_CMD) out=$(BENCH_OUT) $(BENCH_FULL_ARGS) $(BENCH_ARGS)

# LoRA adapter for one task (TASK=tc_top) on BASE (default: the shipped model); FINETUNE_ARGS=key=value ...
TASK ?= tc_top
BASE ?= $(DEFAULT_MODEL)
FINETUNE_ARGS ?=
finetune: setup
	test -f data/tasks/$(TASK)/manifest.json || $(MAKE) splits
	$(CIFLLM) finetune --config train/configs/lora.yaml --task $(TASK) --base $(BASE) --out runs/finetune-$(TASK) $(FINETUNE_ARGS)

finetune-all: setup
	for t in $(TASKS); do test -f runs/finetune-$$t/adapter/cifllm_adapter.json || $(MAKE) --no-print-directory finetune TASK=$$t || exit 1; done

# Reward fine-tuning (issue 30) of a LoRA adapter for one task (TASK=tc_top) on BASE; resumes an interrupted run.
# RL_ARGS=key=value ... (cifllm rl --help). Bench it with: make bench BENCH_ARGS="rl_adapter=runs/rl-{task}/adapter best_of_n=-1"
RL_ARGS ?=
rl: setup
	test -f data/tasks/$(TASK)/manifest.json || $(MAKE) splits
	$(CIFLLM) rl --config train/configs/rl.yaml --task $(TASK) --base $(BASE) --out runs/rl-$(TASK) $(if $(wildcard runs/rl-$(TASK)/config.yaml),--resume) $(RL_ARGS)

# Sim2Real transfer scaling law (issue 17): tiny preset pretrained until its val loss stops improving on 6 nested
# subsets (625-20,000) of the computed structures x 2 repeats, fine-tuned on measured Tc (SuperCon3D) + the task's
# test NLL; measured 3.5 h of wall on ~1 core of the shared 2-core machine (BENCHMARKS.md), resumable (rerun to continue). SCALING_ARGS=protocol=fixed_steps: the old sweep.
# See cifllm/scaling/transfer.py.
SCALING_TASK ?= tc_top
SCALING_ARGS ?=
scaling: setup
	test -f data/tasks/$(SCALING_TASK)/manifest.json || $(MAKE) splits
	$(CIFLLM) scaling --task $(SCALING_TASK) corpus=$(CORPUS) $(SCALING_ARGS)

# the shipped default model: mini preset, recipe train/configs/mini.yaml (3,600 steps, ~3 epochs of data/corpus-base:
# 3-5 h on 2 idle CPU cores, resumable across sessions with the same command), bf16 export, model card
default-model: setup
	test -f data/corpus-base/manifest.json || $(MAKE) splits
	$(CIFLLM) pretrain --config train/configs/mini.yaml corpus=data/corpus-base out=runs/mini-v2 --resume
	$(CIFLLM) export runs/mini-v2/model $(DEFAULT_MODEL) --dtype bfloat16 --overwrite
	$(MAKE) --no-print-directory default-eval card

# the default model's de novo figures for its card: DEFAULT_EVAL_N unprompted samples with the shipped sampling defaults
# (vLLM when installed, HF otherwise), checked with novelty against what it was trained on (data/corpus-base)
DEFAULT_EVAL_N ?= 1000
DEFAULT_EVAL_ENGINE ?= $(if $(wildcard $(VLLM_VENV)/bin/python),vllm,hf)
default-eval: setup
	$(if $(filter vllm,$(DEFAULT_EVAL_ENGINE)),$(VLLM_VENV)/bin/cifllm,$(CIFLLM)) sample --config eval/sample.yaml \
		engine=$(DEFAULT_EVAL_ENGINE) model=$(DEFAULT_MODEL) out=results/default-eval num_samples=$(DEFAULT_EVAL_N) batch_size=64
	$(CIFLLM) evaluate --config eval/eval.yaml samples=results/default-eval \
		$(if $(wildcard data/corpus-base/manifest.json),reference=data/corpus-base,novelty=false)

card: setup
	$(CIFLLM) card $(DEFAULT_MODEL) $(if $(wildcard results/default-eval/eval/metrics.json),--eval results/default-eval/eval/metrics.json) --bench $(BENCH_OUT)
