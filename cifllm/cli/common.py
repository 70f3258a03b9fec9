"""What every stage's command line shares: ``--config YAML`` + ``key=value`` overrides of the stage's config class,
and a ``--help`` that lists every key with its default and comment (generated from the dataclass)."""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

from cifllm.core.config import config_help, load_config

__all__ = ["add_config_arguments", "config_from_args"]

C = TypeVar("C")


def add_config_arguments(p: argparse.ArgumentParser, cls: type, with_file: bool = True, example: str | None = None) -> None:
    """``--config`` (unless ``with_file`` is false) and the ``key=value`` overrides of ``cls``; the parser's epilog
    lists every key of ``cls`` (``cifllm <stage> --help``)."""
    if with_file:
        hint = f" (e.g. {example})" if example else ""
        p.add_argument("--config", default=None, help=f"YAML file of {cls.__name__} keys{hint}; overrides win over it")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"{cls.__name__} overrides (keys below; nested keys dotted: a.b=1)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = f"{cls.__name__} keys (default; meaning):\n{config_help(cls)}"


def config_from_args(cls: type[C], args: argparse.Namespace, extra: dict[str, Any] | None = None) -> C:
    """``cls`` from defaults <- ``--config`` <- ``key=value`` overrides <- ``extra`` (values given as flags)."""
    return load_config(cls, getattr(args, "config", None), list(args.overrides), extra=extra)
