"""Sampling throughput of the HF engine: batch 1 vs batched, tokens/s and samples/s, for model shapes.

    .venv/bin/python benchmarks/bench_sampling.py [--shapes tiny small] [--batch-sizes 1 32] [--threads 2]

Models are random-weight Llamas of the given shapes (:data:`cifllm.sampling.toy.TOY_SHAPES`, or a trained model with
``--model``): throughput depends on the shape, not on the weights; a random model stops at ``<|eos|>`` at random, so
tokens/s counts the tokens actually generated. Writes ``benchmarks/results/bench_sampling.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {len(os.sched_getaffinity(0))} CPUs usable, {gpu}, torch {torch.__version__}, load average at start {load}"


def _count_params(path: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                n += _prod(fh.get_slice(k).get_shape())
    return n


def _prod(shape: list[int]) -> int:
    out = 1
    for x in shape:
        out *= int(x)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--model", default=None, help="benchmark this save_pretrained folder instead of random shapes")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--samples", type=int, default=32, help="samples per measurement (batch 1 uses --samples-b1)")
    ap.add_argument("--samples-b1", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for these small models on a shared CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="vllm: run with the vLLM venv's python")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_sampling"))
    args = ap.parse_args(argv)

    import torch

    from cifllm.sampling.engines import GenerationParams, HFEngine
    from cifllm.sampling.prompts import build_prompt
    from cifllm.sampling.toy import TOY_SHAPES, save_random_llama

    torch.set_num_threads(args.threads)
    prompt = build_prompt(composition="SrTiO3")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [("model", Path(args.model))] if args.model else [(s, save_random_llama(Path(tmp) / s, s, max_positions=2048)) for s in args.shapes]
        for name, path in models:
            if args.engine == "vllm":
                from cifllm.sampling.engines import VLLMEngine

                eng = VLLMEngine(path, gpu_memory_utilization=args.gpu_memory_utilization)
                n_params = _count_params(path)
            else:
                eng = HFEngine(path, device=args.device, threads=args.threads)
                n_params = sum(p.numel() for p in eng.model.parameters())
            # warm-up (first generate call pays one-off costs)
            list(eng.generate([prompt], GenerationParams(num_samples=2, max_new_tokens=8, batch_size=2)))
            for bs in args.batch_sizes:
                n = args.samples_b1 if bs == 1 else args.samples
                params = GenerationParams(num_samples=n, max_new_tokens=args.max_new_tokens, batch_size=bs, seed=0)
                import time

                t0 = time.perf_counter()
                gens = list(eng.generate([prompt], params))
                wall = time.perf_counter() - t0
                toks = sum(g.n_tokens + (1 if g.finished else 0) for g in gens)
                rows.append(
                    {
                        "engine": args.engine,
                        "model": name,
                        "shape": TOY_SHAPES.get(name),
                        "params": n_params,
                        "threads": args.threads,
                        "batch_size": bs,
                        "samples": len(gens),
                        "tokens": toks,
                        "wall_s": round(wall, 3),
                        "tokens_per_s": round(toks / wall, 1),
                        "samples_per_s": round(len(gens) / wall, 3),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            b1 = next((r for r in rows if r["model"] == name and r["batch_size"] == 1), None)
            for r in rows:
                if r["model"] == name and b1:
                    r["speedup_vs_batch1"] = round(r["tokens_per_s"] / b1["tokens_per_s"], 2)
    result = {
        "benchmark": f"sampling ({args.engine} engine)",
        "date": dt.date.today().isoformat(),
        "machine": _machine(),
        "command": "python benchmarks/bench_sampling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "device": args.device,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    md = [
        f"# Sampling throughput ({args.engine} engine), {result['date']}",
        "",
        f"Machine: {result['machine']}. Threads: {args.threads}. Device: {args.device}.",
        f"Command: `{result['command']}`. Prompt `data_Sr1Ti1O3`, up to {args.max_new_tokens} new tokens per sample, random weights.",
        "",
        "| engine | model | params | batch | samples | tokens | wall s | tokens/s | samples/s | x batch 1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['engine']} | {r['model']} | {r['params']:,} | {r['batch_size']} | {r['samples']} | {r['tokens']} | {r['wall_s']} | {r['tokens_per_s']} | {r['samples_per_s']} | {r.get('speedup_vs_batch1', '')} |"
        for r in rows
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
