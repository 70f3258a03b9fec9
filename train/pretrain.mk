# Pretraining targets; included by the top-level Makefile, which defines PY (.venv/bin/python) and CIFLLM
# (.venv/bin/cifllm). See train/README.md.
#
#   make pretrain                                   tiny preset, data/corpus, CPU, 300 steps -> runs/pretrain-tiny
#   make pretrain PRESET=small STEPS=2000 OUT=runs/s   other preset / length / folder
#   make pretrain NPROC=2 DEEPSPEED=train/deepspeed/zero3_offload.json   2 local processes, ZeRO-3 offload
#   make pretrain RESUME=1                          continue OUT from its newest finished checkpoint
#   make pretrain CLUSTER=miyabi NODES=4 PRESET=base GROUP=gx12 [DRY_RUN=1]   render (+ qsub) a Miyabi-G job
#   make pretrain-check                             validate config, corpus, tokenizer, DeepSpeed config; no training

PRESET ?= tiny
CORPUS ?= data/corpus
CLUSTER ?= local
NODES ?= 1
NPROC ?= 1
STEPS ?=
OUT ?= runs/pretrain-$(PRESET)
WALLTIME ?= 12:00:00
GROUP ?=
DRY_RUN ?=
RESUME ?=
# extra key=value overrides, e.g. PRETRAIN_ARGS="lr=1e-3 batch_size=16"
PRETRAIN_ARGS ?=
ifeq ($(CLUSTER),miyabi)
DEEPSPEED ?= train/deepspeed/zero3_offload.json
else
DEEPSPEED ?=
endif
# compiled DeepSpeed ops are cached here (first use compiles for a few minutes)
PRETRAIN_EXTENSIONS_DIR ?= $(if $(TORCH_EXTENSIONS_DIR),$(TORCH_EXTENSIONS_DIR),$(CURDIR)/.torch_extensions)

# prerequisites: the venv, and the corpus when it is not built yet (targets of the top-level Makefile), announced
# first: the full pooled corpus takes 25+ minutes (102,713 records: 28 min on a 2-core machine, with 2 workers)
PRETRAIN_DEPS ?= setup $(if $(wildcard $(CORPUS)/manifest.json),,pretrain-corpus-note data)

PRETRAIN_CONFIG = train/configs/$(PRESET).yaml
PRETRAIN_OVERRIDES = corpus=$(CORPUS) out=$(OUT) $(if $(STEPS),max_steps=$(STEPS)) \
	$(if $(DEEPSPEED),deepspeed=$(DEEPSPEED)) $(PRETRAIN_ARGS)
ifeq ($(NPROC),1)
PRETRAIN_LAUNCH = $(CIFLLM)
else
PRETRAIN_LAUNCH = $(PY) -m torch.distributed.run --standalone --nproc_per_node $(NPROC) -m cifllm.cli
endif

.PHONY: pretrain pretrain-check pretrain-corpus-note
pretrain-corpus-note:
	@echo "make pretrain: $(CORPUS) is not built yet, so it is built first: make data reads every dataset of the" >&2
	@echo "  registry (102,713 records), which took 28 minutes on a 2-core machine. For a quick run on the first" >&2
	@echo "  rows of each source instead: make data-smoke && make pretrain CORPUS=data/corpus-smoke" >&2
pretrain pretrain-check: export TORCH_EXTENSIONS_DIR := $(PRETRAIN_EXTENSIONS_DIR)

pretrain: $(if $(filter local,$(CLUSTER)),$(PRETRAIN_DEPS),setup)
	@test -f $(PRETRAIN_CONFIG) || { echo "unknown PRESET=$(PRESET); presets: $(patsubst train/configs/%.yaml,%,$(wildcard train/configs/*.yaml))" >&2; exit 2; }
ifeq ($(CLUSTER),local)
	$(PRETRAIN_LAUNCH) pretrain --config $(PRETRAIN_CONFIG) $(PRETRAIN_OVERRIDES) $(if $(RESUME),--resume)
else ifeq ($(CLUSTER),miyabi)
	$(CIFLLM) pretrain --cluster miyabi --nodes $(NODES) --walltime $(WALLTIME) $(if $(GROUP),--group $(GROUP)) \
		--config $(PRETRAIN_CONFIG) $(PRETRAIN_OVERRIDES) $(if $(DRY_RUN),--dry-run)
else
	@echo "unknown CLUSTER=$(CLUSTER) (local or miyabi)" >&2; exit 2
endif

pretrain-check: setup
	@test -f $(PRETRAIN_CONFIG) || { echo "unknown PRESET=$(PRESET)" >&2; exit 2; }
	$(CIFLLM) pretrain --check --config $(PRETRAIN_CONFIG) $(PRETRAIN_OVERRIDES) $(if $(RESUME),--resume)
