"""vLLM sampling speed by dtype on this machine (run in the vLLM venv):

    .venv-vllm/bin/python benchmarks/bench_vllm_dtype.py --model runs/quick-v2/model bfloat16
    .venv-vllm/bin/python benchmarks/bench_vllm_dtype.py --model runs/quick-v2/model float32

One warm-up call (compilation), then ``--n`` unconstrained de novo samples at T 0.8 / top-k 10; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

from cifllm.sampling.engines import GenerationParams, make_engine
from cifllm.sampling.prompts import build_prompt

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dtype", choices=["auto", "bfloat16", "float32"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    args = ap.parse_args()
    eng = make_engine("vllm", args.model, constrained=False, max_model_len=2048, dtype=args.dtype)
    p = GenerationParams(num_samples=1, max_new_tokens=args.max_new_tokens, temperature=0.8, top_k=10, batch_size=64)
    list(eng.generate([build_prompt()], p, counts=[8]))  # warm-up: compilation
    t0 = time.perf_counter()
    out = list(eng.generate([build_prompt()], p, counts=[args.n]))
    dt = time.perf_counter() - t0
    n_tok = sum(g.n_tokens for g in out)
    print(json.dumps({"dtype": args.dtype, "engine_dtype": eng.dtype, "samples": len(out), "tokens": n_tok, "wall_s": round(dt, 1), "tokens_per_s": round(n_tok / dt)}))
