"""``cifllm demo [key=value ...]``: sample with the default model, evaluate, report (see :mod:`cifllm.demo`)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help="DemoConfig overrides (model=... out=... n_denovo=32 ...)")


def run(args: argparse.Namespace) -> int:
    from cifllm.config import ConfigError, load_config
    from cifllm.demo import DemoConfig, run_demo
    from cifllm.hub.resolve import ModelNotFoundError
    from cifllm.sampling.engines import EngineError

    try:
        cfg = load_config(DemoConfig, None, list(args.overrides))
        run_demo(cfg)
    except (ConfigError, ModelNotFoundError, EngineError, FileNotFoundError, ValueError) as exc:
        print(f"cifllm demo: error: {exc}", file=sys.stderr)
        return 2
    return 0
