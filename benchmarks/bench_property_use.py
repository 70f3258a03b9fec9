"""Does a task's LoRA adapter read its property line? Teacher-forced NLL of real CIFs after their own value, another
value and no line (:mod:`cifllm.bench.property_use`); no sampling, no oracle.

    .venv/bin/python benchmarks/bench_property_use.py --task tc_top --adapter runs/finetune-tc_top/adapter

Writes ``benchmarks/results/property_use/<task>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

from cifllm.bench.property_use import property_line_use
from cifllm.utils import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def _fmt(d: dict) -> str:
    if d["mean"] is None:
        return "n/a"
    lo, hi = d["ci95"]
    return f"{d['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] (n {d['n']})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True, help="task name (eval/tasks/<task>.yaml) or task file")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--model", default="cifllm/resources/default-model")
    ap.add_argument("--splits", default="data/tasks")
    ap.add_argument("--max-texts", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "property_use"))
    args = ap.parse_args()
    t0 = time.time()
    res = property_line_use(args.model, args.adapter, args.task, args.splits, max_texts=args.max_texts, threads=args.threads)
    meta = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "model": args.model, "adapter": args.adapter, "seconds": round(time.time() - t0, 1)}
    out = Path(args.out)
    atomic_write_json(out / f"{res['task']}.json", {"meta": meta, "result": res})
    tr = res["train_range"]
    lines = [f"`{res['task']}`, property `{res['property']}` ({res['unit']}; adapter trained on {tr['min']:g}-{tr['max']:g}, median {tr['p50']:g}). "
             f"{meta['date']}, {meta['machine']}, {meta['seconds']} s. `{meta['command']}`", "",
             "| CIFs | n | NLL/token: own value | other value | no line | other - own (95% CI) | no line - own (95% CI) |", "|---|---|---|---|---|---|---|"]
    for group, g in res["groups"].items():
        alt = next(k for k in g["nll_per_token"] if k not in ("true", "none"))
        lab = {"shuffled": "another CIF's", "train_median": f"train median {tr['p50']:g}"}[alt]
        lines.append(f"| {group} ({'tail' if group == 'test' else 'in range'}, own values {g['asked']['true']['min']:g}-{g['asked']['true']['max']:g}) | {g['n_texts']} | "
                     f"{g['nll_per_token']['true']:.4f} | {g['nll_per_token'][alt]:.4f} ({lab}) | {g['nll_per_token']['none']:.4f} | "
                     f"{_fmt(g['diff_' + alt + '_minus_true'])} | {_fmt(g['diff_none_minus_true'])} |")
    atomic_write_text(out / f"{res['task']}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
