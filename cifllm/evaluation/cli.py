"""``cifllm evaluate``: thin CLI over :func:`cifllm.evaluation.run.evaluate`."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML file of EvalConfig keys (e.g. eval/eval.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="EvalConfig overrides, e.g. samples=runs/samples reference=data/corpus")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from cifllm.config import ConfigError, load_config
    from cifllm.evaluation.run import EvalConfig, evaluate

    try:
        cfg = load_config(EvalConfig, args.config, list(args.overrides))
        evaluate(cfg, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"cifllm evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0
