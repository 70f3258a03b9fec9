"""``cifllm rl --task T [key=value ...]``: reward fine-tuning of a LoRA adapter (see :mod:`cifllm.training.rl`).

Examples::

    cifllm rl --task tc_top steps=50
    cifllm rl --config train/configs/rl.yaml --task bandgap_top 'rewards={validity: 1, property: 1, target: 1}'
    cifllm rl --task tc_top --resume
"""

from __future__ import annotations

import argparse

from cifllm.cli.common import add_config_arguments
from cifllm.core.config import resolve_run_config
from cifllm.training.rl import RESUME_MUTABLE_KEYS, RLConfig, train_rl

CONFIG = RLConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CONFIG, example="train/configs/rl.yaml")
    p.add_argument("--task", default=None, help="task name (eval/tasks/<task>.yaml); same as task=...")
    p.add_argument("--base", default=None, help="base model folder, 'default' or a Hub id; same as base=...")
    p.add_argument("--out", default=None, help="run folder (default runs/rl-<task>); same as out=...")
    p.add_argument("--merge", action="store_true", help="also write <out>/merged: the adapter merged into the base weights")
    p.add_argument("--resume", action="store_true", help="continue from the newest finished checkpoint of the run folder")


def run(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k) for k in ("task", "base", "out") if getattr(args, k)}
    if args.merge:
        flags["merge"] = True
    cfg = resolve_run_config(CONFIG, args.config, list(args.overrides), resume=args.resume, extra=flags, mutable=RESUME_MUTABLE_KEYS)
    print(train_rl(cfg, resume=args.resume))
    return 0
