"""``cifllm pretrain``: train a preset locally (one process, ``torchrun``, DeepSpeed) or render/submit a Miyabi job.

Examples::

    cifllm pretrain --config train/configs/tiny.yaml corpus=data/corpus out=runs/tiny max_steps=200
    cifllm pretrain --config train/configs/tiny.yaml out=runs/tiny --resume
    torchrun --nproc_per_node 2 -m cifllm.cli pretrain --config train/configs/tiny.yaml \\
        deepspeed=train/deepspeed/zero3_offload.json out=runs/tiny-z3
    cifllm pretrain --config train/configs/base.yaml --cluster miyabi --nodes 4 --group gx12 --dry-run
"""

from __future__ import annotations

import argparse

import yaml

from cifllm.cli.common import add_config_arguments
from cifllm.core.config import ConfigError, config_to_dict, resolve_run_config
from cifllm.training.cluster import MiyabiJob, submit
from cifllm.training.config import RESUME_MUTABLE_KEYS, PretrainConfig
from cifllm.training.pretrain import prepare, pretrain

CONFIG = PretrainConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CONFIG, example="train/configs/tiny.yaml")
    p.add_argument("--resume", action="store_true", help="continue from the newest finished checkpoint of out=...")
    p.add_argument("--check", action="store_true", help="validate config, corpus, tokenizer, DeepSpeed config and exit")
    g = p.add_argument_group("cluster (Miyabi-G, PBS Professional)")
    g.add_argument("--cluster", choices=["local", "miyabi"], default="local", help="where to run (default: %(default)s)")
    g.add_argument("--nodes", type=int, default=1, help="GH200 nodes (one GPU each)")
    g.add_argument("--walltime", default="12:00:00", help="PBS walltime HH:MM:SS (default: %(default)s)")
    g.add_argument("--group", default=None, help="Miyabi group for '#PBS -W group_list' (default: $GROUP)")
    g.add_argument("--queue", default="regular-g", help="PBS queue (default: %(default)s)")
    g.add_argument("--job-name", default=None, help="PBS job name (default: cifllm-<preset>)")
    g.add_argument("--workdir", default=None, help="repository checkout on the cluster (default: current directory)")
    g.add_argument("--cache-root", default=None, help="cache folder on the work filesystem (default: /work/<group>/$USER/.cache)")
    g.add_argument("--modules", default=None, help="space-separated modules to load (default: see train/README.md)")
    g.add_argument("--dry-run", action="store_true", help="print the PBS job file instead of submitting it")


def resolve_config(args: argparse.Namespace) -> PretrainConfig:
    """The run's ``PretrainConfig``; with ``--resume`` and an existing run, the run's saved config plus the keys that
    may change (:data:`~cifllm.training.config.RESUME_MUTABLE_KEYS`; others must agree)."""
    return resolve_run_config(CONFIG, args.config, list(args.overrides), resume=args.resume, mutable=RESUME_MUTABLE_KEYS)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)  # everything that can fail on bad input, before any long work
    if args.cluster == "miyabi":
        return submit(MiyabiJob.from_args(cfg, args), dry_run=args.dry_run)
    if args.dry_run:
        raise ConfigError("--dry-run renders cluster jobs (--cluster miyabi); use --check to validate a local run")
    prep = prepare(cfg, resume=args.resume)
    if args.check:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        print(
            f"# ok: longest CIF {prep.max_tokens} tokens, max_position_embeddings {prep.max_position_embeddings}, "
            f"block {prep.block_size}, precision {'bf16' if prep.bf16 else 'fp32'}, resume from {prep.resume_from}"
        )
        return 0
    pretrain(cfg, resume=args.resume, prepared=prep)
    return 0
