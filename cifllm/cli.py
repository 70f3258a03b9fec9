"""``cifllm <stage>``: thin argument parsing; every stage is a typed function in the library.

Each stage module exposes ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported lazily so
``cifllm --help`` stays fast and a stage's heavy dependencies load only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

#: stage name -> (module, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "demo": ("cifllm.demo_cli", "the main job on built-in defaults: sample with the default model, check, report"),
    "data": ("cifllm.data.cli", "build the canonical CIF corpus from the dataset registry"),
    "tokenizer": ("cifllm.tokenizer_cli", "save the CIF tokenizer and check its round trip on a corpus"),
    "pretrain": ("cifllm.training.cli", "pretrain a Llama model on a corpus"),
    "sample": ("cifllm.sampling.cli", "sample CIFs from a model (HF generate or vLLM)"),
    "evaluate": ("cifllm.evaluation.cli", "check and score sampled CIFs"),
    "split": ("cifllm.bench.cli", "build leakage-checked discovery-task splits from a corpus"),
    "bench": ("cifllm.bench.bench_cli", "run discovery tasks for a model and the template baseline"),
    "finetune": ("cifllm.training.finetune_cli", "LoRA fine-tune a pretrained model on a discovery task"),
    "scaling": ("cifllm.scaling.cli", "transfer scaling-law sweep and fit err(n) = D n^-alpha + C"),
    "generate": ("cifllm.hub.generate_cli", "print CIFs for a composition from the default (or any) model"),
    "export": ("cifllm.hub.export_cli", "write a Hub-ready bf16/fp16 safetensors copy of a model folder"),
    "card": ("cifllm.hub.card_cli", "generate a model card (README.md) from a model's run records"),
    "push": ("cifllm.hub.push_cli", "upload a model folder (model, tokenizer, card) to the Hugging Face Hub"),
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
    stages = _available()
    parser = argparse.ArgumentParser(prog="cifllm", description="Crystal structures as text, and language models over them.")
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
    return int(importlib.import_module(stages[wanted][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
