"""vLLM sampling speed by scheduler batch (``max_num_seqs``: sequences per decode step; the CPU build's default is 256)
and KV-cache size (and, through ``LD_PRELOAD``, the allocator / OpenMP runtime), on the shipped default model with the shipped sampling defaults (constraint engine on, T 0.7,
top-k 10). Run in the vLLM venv, one process per setting (a vLLM engine is not torn down cleanly in-process):

    .venv-vllm/bin/python benchmarks/bench_vllm_batch.py --max-num-seqs 256 --json benchmarks/results/vllm_batch.json
    .venv-vllm/bin/python benchmarks/bench_vllm_batch.py --max-num-seqs 1024 --kv-cache-gib 6 --json ...

One warm-up call (16 samples), then ``--n`` unprompted samples in one request; appends one record to ``--json``
(samples, tokens, wall seconds, tokens/s, samples/s). Validity is not measured here: the samples are identical in
distribution for every setting (same model, parameters and seeds), only the scheduling differs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from cifllm.sampling.engines import CPU_KV_CACHE_GIB, GenerationParams, make_engine
from cifllm.sampling.prompts import build_prompt
from cifllm.utils import atomic_write_json

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifllm/resources/default-model")
    ap.add_argument("--max-num-seqs", type=int, default=0, help="0 = vLLM's default")
    ap.add_argument("--kv-cache-gib", type=float, default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--json", default="benchmarks/results/vllm_batch.json")
    args = ap.parse_args()
    eng = make_engine("vllm", args.model, constrained=True, max_model_len=2048, max_num_seqs=args.max_num_seqs or None,
                      kv_cache_gib=args.kv_cache_gib)
    p = GenerationParams(num_samples=1, max_new_tokens=args.max_new_tokens, temperature=0.7, top_k=10, batch_size=64, constrained=True)
    list(eng.generate([build_prompt()], p, counts=[16]))  # warm-up
    t0 = time.perf_counter()
    out = list(eng.generate([build_prompt()], p, counts=[args.n]))
    dt = time.perf_counter() - t0
    n_tok = sum(g.n_tokens for g in out)
    rec = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": args.model, "max_num_seqs": args.max_num_seqs or "default (256)",
        "kv_cache_gib": args.kv_cache_gib if args.kv_cache_gib is not None else f"default ({CPU_KV_CACHE_GIB:g})", "threads": os.environ.get("OMP_NUM_THREADS"),
        "ld_preload": os.environ.get("LD_PRELOAD") or None,
        "samples": len(out), "finished": sum(g.finished for g in out), "tokens": n_tok, "wall_s": round(dt, 1),
        "tokens_per_s": round(n_tok / dt, 1), "samples_per_s": round(len(out) / dt, 3),
    }
    f = Path(args.json)
    doc = json.loads(f.read_text()) if f.is_file() else {"machine": "2 CPU cores (AMD EPYC), no GPU", "runs": []}
    doc["runs"].append(rec)
    atomic_write_json(f, doc)
    print(json.dumps(rec))
