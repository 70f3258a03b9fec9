"""vLLM CPU process layout and threads, A/B: the same constrained sampling run under several environments.

    .venv/bin/python benchmarks/bench_vllm_process.py --out benchmarks/results/engine/vllm_process.json \
        --n 400 --reps 2 --setting mp:VLLM_ENABLE_V1_MULTIPROCESSING=1 --setting uni:VLLM_ENABLE_V1_MULTIPROCESSING=0

Each setting is ``name:VAR=value[,VAR=value...]`` (``name:`` alone = the environment as is). Every run is a fresh
``cifllm sample --config eval/sample.yaml engine=vllm`` process (vLLM reads these variables once per process) on the
shipped default model, ``--n`` de novo samples, seed 0, ``batch_size=64``; settings alternate within each repetition
(A B A B) so a drift of the machine's speed hits them alike. Per run: sampling wall seconds, generated tokens,
tokens/s and samples/s as ``cifllm sample`` reports them (engine start excluded), and whether its texts equal those of
the first setting's first run (same seeds: a layout change must not change the samples). Run it on an otherwise
idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cifllm.utils import atomic_write_text


def _parse_setting(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    env = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    return name, env


def _texts(folder: Path) -> list[str]:
    return [json.loads(line)["text"] for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--model", default="cifllm/resources/default-model")
    ap.add_argument("--cifllm", default=".venv-vllm/bin/cifllm", help="the cifllm entry point of the vLLM venv")
    ap.add_argument("--n", type=int, default=400, help="de novo samples per run")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--setting", action="append", required=True, help="name:VAR=value[,VAR=value]")
    args = ap.parse_args()
    settings = [_parse_setting(s) for s in args.setting]
    runs: list[dict] = []
    reference: list[str] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-vllm-process-") as tmp:
        for rep in range(args.reps):
            for name, env in settings:
                out = Path(tmp) / f"{name}-{rep}"
                cmd = [args.cifllm, "sample", "--config", "eval/sample.yaml", "engine=vllm", f"model={args.model}",
                       f"out={out}", f"num_samples={args.n}", "batch_size=64"]
                t0 = time.time()
                proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{name} rep {rep}: cifllm sample failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
                summary = json.loads((out / "summary.json").read_text())
                texts = _texts(out)
                if reference is None:
                    reference = texts
                row = {
                    "setting": name, "env": env, "rep": rep, "n_samples": summary["n_samples"],
                    "tokens": summary["generated_tokens"], "wall_s": summary["wall_s"],
                    "tokens_per_s": summary["tokens_per_s"], "samples_per_s": summary["samples_per_s"],
                    "process_s": round(time.time() - t0, 1), "same_texts_as_first": texts == reference,
                }
                runs.append(row)
                print(json.dumps(row), flush=True)
    by: dict[str, list[float]] = {}
    for r in runs:
        by.setdefault(r["setting"], []).append(r["tokens_per_s"])
    result = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(sys.argv), "model": args.model, "n": args.n, "runs": runs,
        "mean_tokens_per_s": {k: round(sum(v) / len(v), 1) for k, v in by.items()},
    }
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["mean_tokens_per_s"]))


if __name__ == "__main__":
    main()
