"""``cifllm export SRC DST``: a checked bf16/fp16/fp32 safetensors copy of a model folder, ready for the Hub.

Example::

    cifllm export runs/base/model exports/cifllm-base --dtype bfloat16
"""

from __future__ import annotations

import argparse

from cifllm.hub.export import DTYPES, export_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="model folder (save_pretrained output, e.g. runs/<run>/model)")
    p.add_argument("dst", help="destination folder (must not exist unless --overwrite)")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="weights dtype (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")


def run(args: argparse.Namespace) -> int:
    r = export_model(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)
    print(
        f"exported {args.src} -> {r.dst} ({r.dtype}): weights {r.src_weights_mb:.2f} MB -> {r.dst_weights_mb:.2f} MB, "
        f"max |logit diff| {r.max_abs_logit_diff:.3g} (tolerance {r.tolerance:.3g}), top-1 agreement {100 * r.top1_agreement:.1f}%"
    )
    print(f"files: {', '.join(r.files)}")
    print(f"next: cifllm card {r.dst} [--eval <samples>/eval/metrics.json] [--bench results/] --repo-id org/name")
    return 0
