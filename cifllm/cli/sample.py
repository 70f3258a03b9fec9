"""``cifllm sample``: thin CLI over :func:`cifllm.sampling.run.sample`."""

from __future__ import annotations

import argparse

from cifllm.cli.common import add_config_arguments, config_from_args
from cifllm.sampling.run import SampleConfig, sample

CONFIG = SampleConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CONFIG, example="eval/sample.yaml")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    sample(config_from_args(CONFIG, args), progress=not args.no_progress)
    return 0
