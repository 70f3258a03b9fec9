"""Pilot of the converged Sim2Real sweep (issue 32): pretrain one (size, repeat) of a sweep config with its early-
stopping rule and record how many steps the validation loss needs to stop improving and what that costs in CPU time.

Usage (one size per process; run the smallest and a mid size)::

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_scaling_pilot.py --config eval/scaling_converged.yaml \\
        --size 625 --out benchmarks/results/scaling-converged/pilot [key=value ...]

Writes ``<out>/pilot-<size>-r<repeat>.json``: the step plan (cap, evaluation interval), steps run, best step, stop
reason, the validation curve, and CPU seconds (``time.process_time``, this single-threaded process) per optimizer step
and in all. Pretraining only: the downstream regression's cost is measured by the sweep rows (``regression.train_s``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cifllm.data.corpus import load_manifest
from cifllm.scaling.downstream import load_downstream
from cifllm.scaling.protocol import nested_subset_corpus, plan_steps, pretrain_early_stopping, read_early_stopping
from cifllm.scaling.sweep import load_scaling_config
from cifllm.scaling.transfer import _pretrain_config, _task_parts, build_pool
from cifllm.utils import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--repeat", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--partial-cpu-s", type=float, default=None, metavar="S",
                    help="do not train: summarize the run so far from its log.jsonl (a pilot still running or stopped), with S CPU seconds measured outside (ps)")
    ap.add_argument("overrides", nargs="*", help="ScalingConfig key=value")
    a = ap.parse_args()
    if a.partial_cpu_s is not None:
        partial(a)
        return
    torch.set_num_threads(1)
    cfg = load_scaling_config(a.config, a.overrides)
    out = Path(a.out)
    data = load_downstream(cfg.corpus, cfg.downstream)
    excl = _task_parts(cfg)[1] if cfg.generative_metric else set()
    train, val, counts = build_pool(cfg, data, excl)
    seed = cfg.seed + a.repeat
    run = out / "runs" / f"{a.size}-r{a.repeat}"
    corpus = nested_subset_corpus(run, train, val, load_manifest(cfg.corpus), a.size, seed, {"protocol": "pilot", "repeat": a.repeat})
    base = _pretrain_config(cfg)
    plan = plan_steps(a.size, base.batch_size * base.grad_accum, cfg.early_stop)
    pcfg = _pretrain_config(cfg, {**plan.overrides(), "corpus": str(corpus), "out": str(run / "pretrain"), "seed": seed, "progress": False})
    c0, t0 = time.process_time(), time.time()
    model = pretrain_early_stopping(pcfg, cfg.early_stop.patience, cfg.early_stop.min_delta, resume=True)
    cpu, wall = time.process_time() - c0, time.time() - t0
    es = read_early_stopping(model)
    rec = {
        "config": a.config, "overrides": a.overrides, "corpus": cfg.corpus, "pool_train": len(train), "size": a.size, "repeat": a.repeat,
        "preset": pcfg.preset, "per_step": plan.per_step, "plan": {"max_steps": plan.max_steps, "eval_steps": plan.eval_steps, "warmup_steps": plan.warmup_steps, "epochs_at_cap": round(plan.epochs_at_cap, 2)},
        "early_stopping": es, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
        "cpu_s_per_step": round(cpu / max(1, es["steps_run"]), 4), "stop_fraction_of_cap": round(es["steps_run"] / plan.max_steps, 3),
        "note": "cpu_s counts this session only (a resumed run has spent more)",
    }
    atomic_write_json(out / f"pilot-{a.size}-r{a.repeat}.json", rec)
    print(json.dumps({k: rec[k] for k in ("size", "cpu_s", "cpu_s_per_step", "stop_fraction_of_cap")} | {"stop": es["stop_reason"], "steps": es["steps_run"], "best": es["best_step"], "best_val": es["best_val_loss"]}))


def partial(a: argparse.Namespace) -> None:
    """``<out>/pilot-<size>-r<repeat>.partial.json``: the validation curve and steps of an unfinished pilot."""
    cfg = load_scaling_config(a.config, a.overrides)
    run = Path(a.out) / "runs" / f"{a.size}-r{a.repeat}" / "pretrain"
    logs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    curve = [(int(r["step"]), float(r["eval_loss"])) for r in logs if "eval_loss" in r]
    steps = max(int(r["step"]) for r in logs)
    best = min((c for c in curve if c[0] > 0), key=lambda c: c[1])
    plan = plan_steps(a.size, _pretrain_config(cfg).batch_size, cfg.early_stop)
    es = cfg.early_stop
    since = [c for c in curve if c[0] > best[0]]
    rec = {
        "finished": False, "size": a.size, "repeat": a.repeat, "steps_so_far": steps, "epochs_so_far": round(steps * plan.per_step / a.size, 2),
        "plan": {"max_steps": plan.max_steps, "eval_steps": plan.eval_steps, "warmup_steps": plan.warmup_steps, "epochs_at_cap": round(plan.epochs_at_cap, 2)},
        "best_step_so_far": best[0], "best_val_loss_so_far": best[1], "evals_since_best": len(since), "patience": es.patience, "min_delta": es.min_delta,
        "val_curve": curve, "cpu_s_so_far": a.partial_cpu_s, "cpu_s_per_step": round(a.partial_cpu_s / max(1, steps), 4),
        "note": "unfinished pilot: the run was still training when this was written (CPU seconds from ps, including start-up)",
    }
    atomic_write_json(Path(a.out) / f"pilot-{a.size}-r{a.repeat}.partial.json", rec)
    print(json.dumps({k: rec[k] for k in ("size", "steps_so_far", "best_step_so_far", "best_val_loss_so_far", "evals_since_best", "cpu_s_per_step")}))


if __name__ == "__main__":
    main()
