"""``cifllm bench --task T [--model M] [--adapter A] [key=value ...]``: run a discovery task (see
:mod:`cifllm.bench.runner`); writes ``results/<task>/metrics.json`` and ``results/BENCH.md``."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", action="append", default=None, help="task name (repeatable; default: every task with a split)")
    p.add_argument("--model", default=None, help="save_pretrained model folder (omit: template baseline only)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder for the model; '{task}' is replaced by the task name (runs/finetune-{task}/adapter); a missing folder means no adapter for that task")
    p.add_argument("--config", default=None, help="YAML with BenchConfig keys")
    p.add_argument("overrides", nargs="*", help="key=value overrides of BenchConfig (n_prompts=5 n_denovo=16 ...)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cifllm.bench.runner import BenchConfig, run_bench
    from cifllm.bench.tasks import list_tasks
    from cifllm.config import load_config

    over = list(args.overrides)
    if args.model:
        over.append(f"model={args.model}")
    base = load_config(BenchConfig, args.config, over)
    names = args.task or [t for t in list_tasks() if (Path(base.splits) / t / "manifest.json").is_file()]
    if not names:
        raise SystemExit(f"no task splits under {base.splits}: run `cifllm split` first")
    for name in names:
        extra = [f"task={name}"]
        if args.adapter:
            a = args.adapter.replace("{task}", name)
            if "{task}" not in args.adapter or Path(a).is_dir():
                extra.append(f"adapter={a}")
            else:
                print(f"[bench {name}] no adapter at {a}: base model and template only")
        cfg = load_config(BenchConfig, args.config, [*over, *extra])
        res = run_bench(cfg)
        for r in res["rows"]:
            print(name, r["generator"], {k: r.get(k) for k in ("csp", "denovo")}, "rediscovery", r["rediscovery"]["rate"])
    print(f"summary: {Path(base.out) / 'BENCH.md'}")
    return 0
