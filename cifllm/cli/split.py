"""``cifllm split``: build discovery-task splits (leakage-checked) from a corpus; ``--pretrain-corpus`` also writes
each task's pretraining corpus (the corpus minus everything the task excludes); ``--base-corpus DIR`` writes the
corpus minus every task's exclusions (one base model, leak-free for all tasks)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cifllm.bench.splits import build_split, task_pretrain_corpus
from cifllm.bench.tasks import list_tasks, load_task
from cifllm.core.records import SplitFiles
from cifllm.data.corpus import load_manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", action="append", default=None, help="task name or YAML path (repeatable; default: all in eval/tasks)")
    p.add_argument("--corpus", default="data/corpus", help="corpus folder the splits are drawn from (default: %(default)s)")
    p.add_argument("--out", default="data/tasks", help="folder for <task>/{train,val,test}.jsonl + manifest.json")
    p.add_argument("--workers", type=int, default=2, help="processes for the leakage check's structure matching (default: %(default)s)")
    p.add_argument("--pretrain-corpus", action="store_true", help="also write <out>/<task>/pretrain_corpus/")
    p.add_argument(
        "--base-corpus", default=None, metavar="DIR",
        help="also write DIR: the corpus minus the union of every task's exclusions (a base model for all tasks)",
    )


def run(args: argparse.Namespace) -> int:
    names = args.task or list_tasks()
    tasks = [load_task(name) for name in names]  # every task and the corpus checked before any split is written
    load_manifest(args.corpus)
    for task in tasks:
        man = build_split(task, args.corpus, args.out, workers=args.workers)
        print(json.dumps({"task": task.name, "counts": man["counts"], "leaks_found": man["leak_check"]["leaks_found"], "rule": {k: v for k, v in man["rule"].items() if k != "elements"}}))
        if args.pretrain_corpus:
            task_pretrain_corpus(args.corpus, Path(args.out) / task.name, Path(args.out) / task.name / "pretrain_corpus")
    if args.base_corpus:
        out = task_pretrain_corpus(args.corpus, [Path(args.out) / t.name for t in tasks], args.base_corpus)
        print(json.dumps({"base_corpus": str(out), "excluded_rows": json.loads(SplitFiles(out).manifest.read_text())["excluded_rows"]}))
    return 0
