"""``cifllm finetune --task T --base M [key=value ...]``: LoRA fine-tuning on a discovery task's train split
(see :mod:`cifllm.training.finetune`).

Examples::

    cifllm finetune --task tc_top --base runs/mini/model max_steps=300
    cifllm finetune --task tc_top --base default --merge
    cifllm finetune --config train/configs/lora.yaml --task kappa_top --resume
"""

from __future__ import annotations

import argparse

from cifllm.cli.common import add_config_arguments
from cifllm.core.config import resolve_run_config
from cifllm.training.finetune import RESUME_MUTABLE_KEYS, FinetuneConfig, finetune

CONFIG = FinetuneConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CONFIG, example="train/configs/lora.yaml")
    p.add_argument("--task", default=None, help="task name (eval/tasks/<task>.yaml); same as task=...")
    p.add_argument("--base", default=None, help="base model folder, 'default' or a Hub id; same as base=...")
    p.add_argument("--out", default=None, help="run folder (default runs/finetune-<task>); same as out=...")
    p.add_argument("--merge", action="store_true", help="also write <out>/merged: the adapter merged into the base weights")
    p.add_argument("--resume", action="store_true", help="continue from the newest finished checkpoint of the run folder")


def run(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k) for k in ("task", "base", "out") if getattr(args, k)}
    if args.merge:
        flags["merge"] = True
    cfg = resolve_run_config(CONFIG, args.config, list(args.overrides), resume=args.resume, extra=flags, mutable=RESUME_MUTABLE_KEYS)
    print(finetune(cfg, resume=args.resume))
    return 0
