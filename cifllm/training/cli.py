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
import sys
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help="PretrainConfig overrides (e.g. max_steps=500 lr=6e-4)")
    p.add_argument("--config", default=None, help="run YAML (train/configs/<preset>.yaml); overrides win over it")
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


def _explicit_values(args: argparse.Namespace) -> dict[str, Any]:
    """Keys the user gave (config file, then overrides), as raw values."""
    import yaml

    from cifllm.config import ConfigError, parse_overrides

    explicit: dict[str, Any] = {}
    if args.config:
        p = Path(args.config)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist (presets: train/configs/*.yaml)")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        explicit.update(loaded)
    explicit.update(parse_overrides(args.overrides))
    return explicit


def resolve_config(args: argparse.Namespace):
    """The run's ``PretrainConfig``; with ``--resume`` and an existing run, the run's saved config plus the keys that
    may change (others must agree)."""
    from cifllm.config import config_to_dict
    from cifllm.training.config import load_pretrain_config, merge_for_resume

    explicit = _explicit_values(args)
    cfg = load_pretrain_config(None, explicit)
    saved = cfg.run_dir / "config.yaml"
    if args.resume and saved.is_file():
        given = config_to_dict(cfg)
        cfg = merge_for_resume(load_pretrain_config(saved), {k: given[k] for k in explicit})
    return cfg


def run(args: argparse.Namespace) -> int:
    from cifllm.config import ConfigError, config_to_dict
    from cifllm.modeling import UnknownPresetError
    from cifllm.training.checkpoints import CheckpointError

    try:  # everything that can fail on bad input, before any long work
        cfg = resolve_config(args)
        if args.cluster == "miyabi":
            from cifllm.training.cluster import MiyabiJob, submit

            return submit(MiyabiJob.from_args(cfg, args), dry_run=args.dry_run)
        if args.dry_run:
            print("cifllm pretrain: --dry-run renders cluster jobs; use --check to validate a local run", file=sys.stderr)
            return 2
        from cifllm.training.pretrain import prepare, pretrain

        prep = prepare(cfg, resume=args.resume)
    except (ConfigError, UnknownPresetError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"cifllm pretrain: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        import yaml

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        print(
            f"# ok: longest CIF {prep.max_tokens} tokens, max_position_embeddings {prep.max_position_embeddings}, "
            f"block {prep.block_size}, precision {'bf16' if prep.bf16 else 'fp32'}, resume from {prep.resume_from}"
        )
        return 0
    pretrain(cfg, resume=args.resume, prepared=prep)
    return 0
