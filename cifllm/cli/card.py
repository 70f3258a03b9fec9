"""``cifllm card MODEL_DIR``: write README.md (a Hub model card) from the folder's run records; for a LoRA adapter
folder (``cifllm_adapter.json``), the adapter's card from its record.

Example::

    cifllm card exports/cifllm-base --eval runs/samples/eval/metrics.json --bench results/ --repo-id org/cifllm-base
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifllm.core.records import ADAPTER_RECORD
from cifllm.hub.card import render_model_card, write_model_card
from cifllm.training.adapters import write_adapter_card


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="model folder (an export, or runs/<run>/model), or a LoRA adapter folder")
    p.add_argument("--eval", dest="eval_metrics", default=None, help="evaluation metrics.json (cifllm evaluate output) or its folder")
    p.add_argument("--bench", dest="bench_dir", default=None, help="cifllm bench results folder (<dir>/<task>/metrics.json)")
    p.add_argument("--repo-id", default=None, help="Hub id org/name used in the title and examples")
    p.add_argument("--stdout", action="store_true", help="print the card instead of writing README.md")


def run(args: argparse.Namespace) -> int:
    if (Path(args.model_dir) / ADAPTER_RECORD).is_file():
        print(f"wrote {write_adapter_card(args.model_dir)}")
        return 0
    if args.stdout:
        sys.stdout.write(render_model_card(args.model_dir, args.eval_metrics, args.bench_dir, args.repo_id))
        return 0
    path = write_model_card(args.model_dir, args.eval_metrics, args.bench_dir, args.repo_id)
    print(f"wrote {path}")
    return 0
