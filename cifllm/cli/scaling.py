"""``cifllm scaling --task T [key=value ...]``: the transfer scaling-law sweep and fit (:mod:`cifllm.scaling.sweep`).

Examples::

    cifllm scaling --task tc_top sizes=[250,500,1000,2000] repeats=2
    cifllm scaling --fit-only out=results/scaling/tc_top target=1.2
    cifllm scaling --task tc_top sizes=[5000,10000,20000,40000] repeats=3 --emit-pbs jobs/ --group gx12
"""

from __future__ import annotations

import argparse

from cifllm.cli.common import add_config_arguments, config_from_args
from cifllm.core.records import SCALING_REPORT
from cifllm.scaling.sweep import ScalingConfig, fit_sweep, render_sweep_pbs, run_sweep

CONFIG = ScalingConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CONFIG)
    p.add_argument("--task", default=None, help="task name (eval/tasks/<task>.yaml); same as task=...")
    p.add_argument("--fit-only", action="store_true", help="fit the rows already in <out>/runs.jsonl (no training)")
    p.add_argument("--emit-pbs", default=None, metavar="DIR", help="write one Miyabi PBS job per (size, repeat) into DIR instead of running")
    p.add_argument("--group", default=None, help="Miyabi group for the PBS jobs (default $GROUP)")
    p.add_argument("--walltime", default="02:00:00", help="PBS walltime per run")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(CONFIG, args, extra={"task": args.task} if args.task else None)
    if args.emit_pbs:
        files = render_sweep_pbs(cfg, args.emit_pbs, group=args.group, walltime=args.walltime, config_path=args.config)
        print("\n".join(str(f) for f in files))
        return 0
    if args.fit_only:
        written = fit_sweep(cfg.out_dir, target=cfg.target, meta={"task": cfg.task, "metric": "test_nll (nats/token)"})
    else:
        out = run_sweep(cfg)
        written = {"folder": out} if cfg.only else {"report": out / SCALING_REPORT}
    for k, v in written.items():
        print(f"{k}: {v}")
    return 0
