"""``cifllm evaluate``: thin CLI over :func:`cifllm.evaluation.run.evaluate`."""

from __future__ import annotations

import argparse

from cifllm.cli.common import add_config_arguments, config_from_args
from cifllm.evaluation.run import EvalConfig, evaluate

CONFIG = EvalConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CONFIG, example="eval/eval.yaml")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    evaluate(config_from_args(CONFIG, args), progress=not args.no_progress)
    return 0
