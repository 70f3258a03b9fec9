"""Fine-tuning cost on this machine: LoRA vs full fine-tuning, tokens/s, peak memory, adapter size.

For every preset a base model of that shape is pretrained for a few steps on the task's data (weights only matter for
size, not for speed), then ``cifllm finetune`` runs in a fresh process per method (so peak resident memory is that
method's own): ``method=lora`` (the shipped recipe, train/configs/lora.yaml) and ``method=full``. tokens/s are real
(non-padding) tokens per second over the whole fine-tuning run, from the run's own record.

    .venv/bin/python benchmarks/bench_finetune.py --task tc_top --presets tiny small --steps 20

Writes ``benchmarks/results/finetune_cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="tc_top")
    ap.add_argument("--splits", default="data/tasks")
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--bases", nargs="*", default=[], help="PRESET=MODEL_DIR: use this model instead of a fresh one")
    args = ap.parse_args()
    py = sys.executable
    given = dict(b.split("=", 1) for b in args.bases)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            base = given.get(preset)
            if base is None:  # a base of this shape: 2 steps on the split's pretraining corpus is enough for timing
                corpus = Path(tmp) / "corpus"
                if not corpus.exists():
                    from cifllm.bench.splits import task_pretrain_corpus

                    task_pretrain_corpus("data/corpus", Path(args.splits) / args.task, corpus)
                _run([py, "-m", "cifllm.cli", "pretrain", f"corpus={corpus}", f"out={tmp}/base-{preset}", f"preset={preset}", "max_steps=2", "warmup_steps=1", "batch_size=2", "eval_steps=0", "eval_max_sequences=4", "progress=false"])
                base = f"{tmp}/base-{preset}/model"
            for method in ("lora", "full"):
                out = Path(tmp) / f"ft-{preset}-{method}"
                _run([
                    py, "-m", "cifllm.cli", "finetune", "--config", "train/configs/lora.yaml", "--task", args.task, "--base", base,
                    "--out", str(out), f"splits={args.splits}", f"method={method}", f"max_steps={args.steps}", "warmup_steps=2",
                    f"batch_size={args.batch_size}", "eval_steps=0", "eval_max_sequences=8", f"save_steps={args.steps}", "progress=false",
                ])
                rec = json.loads((out / "metrics.json").read_text())
                rows.append({
                    "preset": preset, "method": method, "base_parameters": rec["base_parameters"],
                    "trainable_parameters": rec["trainable_parameters"], "steps": rec["global_step"], "batch_size": args.batch_size,
                    "tokens": rec["tokens_seen"], "seconds": rec["train_seconds_this_session"], "tokens_per_s": rec["tokens_per_second"],
                    "peak_rss_mb": rec["peak_rss_mb"], "saved_mb": rec["adapter_mb"], "precision": rec["precision"],
                })
                print(json.dumps(rows[-1]), flush=True)
    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_at_end": os.getloadavg(), "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "task": args.task,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "finetune_cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"Fine-tuning on {meta['machine']}, {meta['date']}, task {args.task}, {args.steps} steps x {args.batch_size} CIFs. `{meta['command']}`",
        "",
        "| preset | method | trainable / total params | tokens/s | peak RSS MB | saved MB (adapter or model) | precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['method']} | {r['trainable_parameters']:,} / {r['base_parameters']:,} | {r['tokens_per_s']} | "
            f"{r['peak_rss_mb']} | {r['saved_mb']:.2f} | {r['precision']} |"
        )
    (RESULTS / "finetune_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
