#!/usr/bin/env bash
# The converged Sim2Real sweep of issue 32, resumable: builds what is missing (the pooled corpus, the tc_top split),
# then runs or continues `cifllm scaling --config eval/scaling_converged.yaml` (finished runs are skipped, the run in
# progress resumes from its last checkpoint with its early-stopping state). Single-threaded and at nice 19 so it never
# slows a shared machine. Extra arguments are ScalingConfig key=value overrides. Run from the repository root:
#   CIFLLM_DATA_DIR=../shared/data nohup benchmarks/scaling_converged.sh > runs/scaling-converged.log 2>&1 &
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
CIFLLM=${CIFLLM:-cifllm}
test -f data/corpus/manifest.json || nice -n 19 "$CIFLLM" data --config data_prep/pooled.yaml out=data/corpus --no-progress
test -f data/tasks/tc_top/manifest.json || nice -n 19 "$CIFLLM" split --task tc_top --corpus data/corpus --out data/tasks --workers 1
exec nice -n 19 "$CIFLLM" scaling --config eval/scaling_converged.yaml threads=1 "$@"
