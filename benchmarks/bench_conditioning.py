"""Does property conditioning work on real data? Fine-tune a LoRA adapter of a pretrained model on a task's real
train split conditioned on a derived property (``n_atoms`` or ``density``: no oracle needed), ask for several values,
measure what the model writes.

    .venv/bin/python benchmarks/bench_conditioning.py --base cifllm/resources/default-model --task id_random \
        --property n_atoms --asked 4 8 16 32 --n 16 --steps 100

Writes ``benchmarks/results/conditioning_<property>.json`` and ``.md``; the adapter stays in ``runs/cond-<property>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="cifllm/resources/default-model")
    ap.add_argument("--task", default="id_random")
    ap.add_argument("--property", default="n_atoms", choices=["n_atoms", "density"])
    ap.add_argument("--asked", nargs="+", type=float, default=[4, 8, 16, 32])
    ap.add_argument("--n", type=int, default=16, help="samples per asked value")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from cifllm.evaluation.conditioning import conditioning_response
    from cifllm.training.finetune import finetune, load_finetune_config

    out = REPO / "runs" / f"cond-{args.property}"
    adapter = out / "adapter"
    t0 = time.time()
    if not (adapter / "cifllm_adapter.json").is_file():
        cfg = load_finetune_config(REPO / "train/configs/lora.yaml", {
            "task": args.task, "base": args.base, "out": str(out), "conditioning": [args.property], "max_steps": args.steps,
            "warmup_steps": 10, "eval_steps": 50, "save_steps": 50, "eval_max_sequences": 128, "progress": False, "threads": args.threads,
        })
        finetune(cfg, resume=out.exists())
    ft_s = time.time() - t0
    rec = json.loads((adapter / "cifllm_adapter.json").read_text())
    t1 = time.time()
    res = conditioning_response(args.base, adapter, args.property, args.asked, n_per_value=args.n, max_new_tokens=args.max_new_tokens, threads=args.threads)
    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "task": args.task, "base": args.base,
        "finetune_steps": rec["global_step"], "train_range": rec["conditioning"][args.property], "eval_loss": rec["eval_loss"],
        "eval_loss_base": rec["eval_loss_base"], "finetune_s": round(ft_s, 1), "sample_s": round(time.time() - t1, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"conditioning_{args.property}.json").write_text(json.dumps({"meta": meta, "result": res}, indent=1))
    tr = meta["train_range"]
    lines = [
        f"Conditioning on `{args.property}` ({args.task} train split, real data; LoRA {rec['global_step']} steps on `{args.base}`; "
        f"training values {tr['min']:g}-{tr['max']:g}, median {tr['p50']:g}). {meta['date']}. `{meta['command']}`",
        "",
        "| asked | samples | measured | mean | median |",
        "|---|---|---|---|---|",
    ]
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    for k, v in res["asked"].items():
        lines.append(f"| {k} | {v['n']} | {v['n_measured']} | {fmt(v['mean'])} | {fmt(v['median'])} |")
    lines += ["", f"Spearman rho (asked vs measured, all measured samples): {res['spearman'] if res['spearman'] is None else round(res['spearman'], 3)}"]
    (RESULTS / f"conditioning_{args.property}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
