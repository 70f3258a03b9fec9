"""``cifllm scaling --task T [key=value ...]``: the transfer scaling-law sweep and fit (:mod:`cifllm.scaling.sweep`).

Examples::

    cifllm scaling --task tc_top sizes=[250,500,1000,2000] repeats=2
    cifllm scaling --fit-only out=results/scaling/tc_top target=1.2
    cifllm scaling --task tc_top sizes=[5000,10000,20000,40000] repeats=3 --emit-pbs jobs/ --group gx12
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help="ScalingConfig overrides (sizes=[...] repeats=2 target=1.1 ...)")
    p.add_argument("--task", default=None, help="task name (eval/tasks/<task>.yaml)")
    p.add_argument("--config", default=None, help="YAML with ScalingConfig keys")
    p.add_argument("--fit-only", action="store_true", help="fit the rows already in <out>/runs.jsonl (no training)")
    p.add_argument("--emit-pbs", default=None, metavar="DIR", help="write one Miyabi PBS job per (size, repeat) into DIR instead of running")
    p.add_argument("--group", default=None, help="Miyabi group for the PBS jobs (default $GROUP)")
    p.add_argument("--walltime", default="02:00:00", help="PBS walltime per run")


def run(args: argparse.Namespace) -> int:
    from cifllm.config import ConfigError
    from cifllm.scaling.fit import ScalingError
    from cifllm.scaling.sweep import fit_sweep, load_scaling_config, render_sweep_pbs, run_sweep

    over = list(args.overrides) + ([f"task={args.task}"] if args.task else [])
    try:
        cfg = load_scaling_config(args.config, over)
        if args.emit_pbs:
            files = render_sweep_pbs(cfg, args.emit_pbs, group=args.group, walltime=args.walltime, config_path=args.config)
            print("\n".join(str(f) for f in files))
            return 0
        if args.fit_only:
            written = fit_sweep(cfg.out_dir, target=cfg.target, meta={"task": cfg.task, "metric": "test_nll (nats/token)"})
        else:
            out = run_sweep(cfg)
            written = {"folder": out} if cfg.only else {"report": out / "REPORT.md"}
    except (ConfigError, ScalingError, FileNotFoundError, ValueError) as exc:
        print(f"cifllm scaling: error: {exc}", file=sys.stderr)
        return 2
    for k, v in written.items():
        print(f"{k}: {v}")
    return 0
