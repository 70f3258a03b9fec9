"""``cifllm demo [key=value ...]``: sample with the default model, evaluate, report (see :mod:`cifllm.demo`)."""

from __future__ import annotations

import argparse

from cifllm.cli.common import add_config_arguments, config_from_args
from cifllm.demo import DemoConfig, run_demo

CONFIG = DemoConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CONFIG, with_file=False)


def run(args: argparse.Namespace) -> int:
    run_demo(config_from_args(CONFIG, args))
    return 0
