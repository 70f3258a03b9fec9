"""``cifllm finetune --task T --base M [key=value ...]``: LoRA fine-tuning on a discovery task's train split
(see :mod:`cifllm.training.finetune`).

Examples::

    cifllm finetune --task tc_top --base runs/mini/model max_steps=300
    cifllm finetune --task tc_top --base default --merge
    cifllm finetune --config train/configs/lora.yaml --task kappa_top --resume
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help="FinetuneConfig overrides (max_steps=300 lora_r=8 ...)")
    p.add_argument("--task", default=None, help="task name (eval/tasks/<task>.yaml)")
    p.add_argument("--base", default=None, help="base model folder, 'default' or a Hub id")
    p.add_argument("--out", default=None, help="run folder (default runs/finetune-<task>)")
    p.add_argument("--config", default=None, help="YAML with FinetuneConfig keys (train/configs/lora.yaml)")
    p.add_argument("--merge", action="store_true", help="also write <out>/merged: the adapter merged into the base weights")
    p.add_argument("--resume", action="store_true", help="continue from the newest finished checkpoint of the run folder")


def run(args: argparse.Namespace) -> int:
    from cifllm.config import ConfigError
    from cifllm.training.finetune import finetune, load_finetune_config

    over = list(args.overrides)
    for key in ("task", "base", "out"):
        if getattr(args, key):
            over.append(f"{key}={getattr(args, key)}")
    if args.merge:
        over.append("merge=true")
    try:
        cfg = load_finetune_config(args.config, over)
    except (ConfigError, ValueError) as exc:
        print(f"cifllm finetune: error: {exc}", file=sys.stderr)
        return 2
    try:
        adapter = finetune(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"cifllm finetune: error: {exc}", file=sys.stderr)
        return 2
    print(adapter)
    return 0
