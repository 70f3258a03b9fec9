"""``cifllm <stage>``: the top layer - thin argument parsing over typed library functions, one module per stage.

Each stage module (``cifllm.cli.<stage>``) exposes ``add_arguments(parser)`` and ``run(args) -> int``; a stage with a
config class builds it with :mod:`cifllm.cli.common` (``--config`` YAML + ``key=value`` overrides; ``--help`` lists
every key). :data:`STAGES` maps a stage name to its module *by name*: only the stage that runs is imported, so
``cifllm --help`` stays fast and a stage's heavy dependencies load only when it runs.

Error contract (one handler, here, for every stage): a user error - a bad config key or value, a missing path, an
unknown task, an empty data folder, a corrupt model file, bad input records - ends the run with one line on stderr,
``cifllm <stage>: error: <what>: <why>``, and exit code 2; no traceback unless ``--debug`` (anywhere on the command
line) or ``CIFLLM_DEBUG=1``. User errors are :class:`cifllm.core.errors.CifllmError` (and the error classes still outside
that hierarchy, listed in :data:`USER_ERRORS`), plus ``OSError`` (a path), ``ValueError`` and the safetensors loader's error (reported
with the file it was reading), and a JSON/YAML parser's ``RecursionError`` (an input nested too deeply, reported with
the file it was reading). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path

from cifllm.core.errors import CifllmError

#: Error classes of cifllm outside the :class:`CifllmError` hierarchy (module, class name). They are matched only when
#: their module is already imported (an exception of that class cannot exist otherwise), so the handler imports nothing.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("cifllm.data.registry", "DataError"),
)
MAX_MESSAGE_CHARS = 1000


def _is_listed(exc: BaseException) -> bool:
    for mod, name in USER_ERRORS:
        cls = getattr(sys.modules.get(mod), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _file_in_traceback(exc: BaseException, suffixes: tuple[str, ...]) -> str | None:
    """The innermost path ending in one of ``suffixes`` held by a local variable of the failing call chain."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, (str, Path)) and str(value).endswith(suffixes):
                found = str(value)
        tb = tb.tb_next
    return found


#: files a parser may be reading when it runs out of stack (see :func:`_parser_recursion`)
INPUT_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".txt", ".cif")


def _parser_recursion(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``RecursionError`` raised inside the JSON or YAML parser: an input nested too deeply (the
    readers of :mod:`cifllm.core.inputs` report it themselves; this is the net for any other reader)."""
    if not isinstance(exc, RecursionError):
        return False
    tb = exc.__traceback__
    while tb is not None:
        parts = Path(tb.tb_frame.f_code.co_filename).parts
        if "json" in parts or "yaml" in parts:
            return True
        tb = tb.tb_next
    return False


def user_error_message(exc: BaseException) -> str | None:
    """One line naming the thing and the reason when ``exc`` is a user error; None for anything else (a bug)."""
    if type(exc).__name__ == "SafetensorError":  # the Rust loader's error never names the file
        path = _file_in_traceback(exc, (".safetensors",))
        msg = f"{path or 'a .safetensors file'}: not a readable safetensors file ({exc})"
    elif _parser_recursion(exc):
        path = _file_in_traceback(exc, INPUT_SUFFIXES)
        msg = f"{path or 'an input file'}: JSON/YAML nested too deeply to parse"
    elif isinstance(exc, CifllmError) or _is_listed(exc):
        msg = str(exc) or type(exc).__name__
    elif isinstance(exc, OSError) and getattr(exc, "filename", None) and getattr(exc, "strerror", None):
        msg = f"{exc.filename}: {exc.strerror}"
    elif isinstance(exc, (OSError, ValueError)):
        msg = f"{exc}" or type(exc).__name__
    else:
        return None
    line = " ".join(msg.split())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 3] + "..."


def _debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    rest = [a for a in argv if a != "--debug"]
    env = os.environ.get("CIFLLM_DEBUG", "").lower() in ("1", "true", "yes", "on")
    return len(rest) != len(argv) or env, rest


#: stage name -> (module, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "demo": ("cifllm.cli.demo", "the main job on built-in defaults: sample with the default model, check, report"),
    "data": ("cifllm.cli.data", "build the canonical CIF corpus from the dataset registry"),
    "tokenizer": ("cifllm.cli.tokenizer", "save the CIF tokenizer and check its round trip on a corpus"),
    "pretrain": ("cifllm.cli.pretrain", "pretrain a Llama model on a corpus"),
    "sample": ("cifllm.cli.sample", "sample CIFs from a model (HF generate or vLLM)"),
    "evaluate": ("cifllm.cli.evaluate", "check and score sampled CIFs"),
    "split": ("cifllm.cli.split", "build leakage-checked discovery-task splits from a corpus"),
    "bench": ("cifllm.cli.bench", "run discovery tasks for a model and the template baseline"),
    "finetune": ("cifllm.cli.finetune", "LoRA fine-tune a pretrained model on a discovery task"),
    "rl": ("cifllm.cli.rl", "reward fine-tuning (GRPO/RLOO) of a LoRA adapter with property and potential rewards"),
    "scaling": ("cifllm.cli.scaling", "transfer scaling-law sweep and fit err(n) = D n^-alpha + C"),
    "generate": ("cifllm.cli.generate", "print CIFs for a composition from the default (or any) model"),
    "export": ("cifllm.cli.export", "write a Hub-ready bf16/fp16 safetensors copy of a model folder"),
    "card": ("cifllm.cli.card", "generate a model card (README.md) from a model's run records"),
    "push": ("cifllm.cli.push", "upload a model folder (model, tokenizer, card) to the Hugging Face Hub"),
}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (mod, help_) in STAGES.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:  # parent package not installed
            found = False
        if found:
            out[name] = (mod, help_)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug, argv = _debug_requested(list(argv))
    stages = _available()
    parser = argparse.ArgumentParser(
        prog="cifllm",
        description="Crystal structures as text, and language models over them.",
        epilog="A bad input ends with one line 'cifllm <stage>: error: ...' and exit code 2; --debug (anywhere) or CIFLLM_DEBUG=1 shows the traceback.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also after the stage name)")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>")
    wanted = argv[0] if argv and argv[0] in stages else None
    for name, (mod, help_) in stages.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == wanted:
            importlib.import_module(mod).add_arguments(p)
    if wanted is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    args = parser.parse_args(argv)
    return run_stage(wanted, stages[wanted][0], args, debug)


def run_stage(stage: str, module: str, args: argparse.Namespace, debug: bool = False) -> int:
    """Run one stage under the error contract (see the module docstring)."""
    try:
        return int(importlib.import_module(module).run(args) or 0)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        msg = user_error_message(exc)
        if msg is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"cifllm {stage}: error: {msg}", file=sys.stderr)
        return 2


__all__ = ["main", "run_stage", "user_error_message", "USER_ERRORS", "STAGES"]

