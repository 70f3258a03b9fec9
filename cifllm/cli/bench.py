"""``cifllm bench --task T [--model M] [--adapter A] [key=value ...]``: run a discovery task (see
:mod:`cifllm.bench.runner`); writes ``<out>/<task>/rows/``, ``<out>/<task>/metrics.json``, ``<out>/<task>/per_prompt.md``
and ``<out>/BENCH.md``. Rerunning the same command loads the rows already finished (resumable)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from cifllm.bench.runner import BenchConfig, run_bench
from cifllm.bench.tasks import list_tasks
from cifllm.cli.common import add_config_arguments, config_from_args
from cifllm.core.errors import CifllmError
from cifllm.core.records import BENCH_SUMMARY, SplitFiles
from cifllm.core.report import pct

CONFIG = BenchConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CONFIG)
    p.add_argument("--task", action="append", default=None, help="task name (repeatable; default: every task with a split)")
    p.add_argument("--model", default=None, help="save_pretrained model folder (omit: template baseline only)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder for the model; '{task}' is replaced by the task name (runs/finetune-{task}/adapter); a missing folder means no adapter for that task")


def run(args: argparse.Namespace) -> int:
    base = config_from_args(CONFIG, args, extra={"model": args.model} if args.model else None)
    names = args.task or [t for t in list_tasks() if SplitFiles(Path(base.splits) / t).manifest.is_file()]
    if not names:
        raise CifllmError(f"no task splits under {base.splits}: run `cifllm split` first")
    for name in names:
        adapter = base.adapter
        if args.adapter:
            a = args.adapter.replace("{task}", name)
            if "{task}" not in args.adapter or Path(a).is_dir():
                adapter = a
            else:
                print(f"[bench {name}] no adapter at {a}: base model and template only")
        res = run_bench(dataclasses.replace(base, task=name, adapter=adapter))
        for r in res["rows"]:
            if base.stage == "generate":
                print(name, r["generator"], r["status"])
                continue
            c, dn = r.get("csp") or {}, r.get("denovo") or {}
            k = c.get("samples_per_prompt", 1)
            print(
                name, r["generator"], f"match@1 {pct(c.get('match@1'))}", f"match@{k} {pct(c.get(f'match@{k}'))}",
                f"de novo valid {pct(dn.get('valid'))}", f"rediscovery {pct(r['rediscovery']['rate'])}",
            )
    if base.stage == "generate":
        print(f"samples saved under {Path(base.out)}/<task>/rows; rerun with stage=all to score them")
    else:
        print(f"summary: {Path(base.out) / BENCH_SUMMARY}")
    return 0
