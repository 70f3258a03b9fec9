"""Loss curves of training runs (``cifllm.training.curves``): training and validation loss against tokens seen.

    .venv/bin/python benchmarks/plot_loss_curves.py runs/mini-v2 runs/mini-v2-cool1200=cooldown@1200 \
        --out benchmarks/results/default_model/loss_curves.png --title "default model long run"

Each positional argument is a run folder (with ``log.jsonl``), optionally ``=label``. Also writes ``<out>.json`` with
each run's validation points (step, tokens seen, loss) and its best one, so the figure's numbers can be read back.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cifllm.training.curves import plot_loss_curves, read_loss_curve
from cifllm.utils import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN[=LABEL]")
    ap.add_argument("--out", default="benchmarks/results/default_model/loss_curves.png")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    curves = [read_loss_curve(*r.split("=", 1)) for r in args.runs]  # RUN or RUN=LABEL
    png = plot_loss_curves(curves, args.out, title=args.title)
    atomic_write_json(
        Path(args.out).with_suffix(".json"),
        {c.label: {"eval": [list(e) for e in c.eval], "best_eval": list(c.best_eval) if c.best_eval else None} for c in curves},
    )
    print(png)


if __name__ == "__main__":
    main()
