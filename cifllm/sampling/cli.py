"""``cifllm sample``: thin CLI over :func:`cifllm.sampling.run.sample`."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML file of SampleConfig keys (e.g. eval/sample.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="SampleConfig overrides, e.g. model=runs/tiny composition=NaCl z=4 num_samples=20")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cifllm.config import ConfigError, load_config
    from cifllm.sampling.engines import EngineError
    from cifllm.sampling.prompts import PromptError
    from cifllm.sampling.run import SampleConfig, sample

    try:
        cfg = load_config(SampleConfig, args.config, list(args.overrides))
        sample(cfg, progress=not args.no_progress)
    except (ConfigError, PromptError, EngineError, FileNotFoundError, ValueError) as exc:
        print(f"cifllm sample: error: {exc}", file=sys.stderr)
        return 2
    return 0
