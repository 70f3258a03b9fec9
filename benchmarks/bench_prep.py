"""Benchmark: canonicalization throughput (CIFs/s, 1 and N workers) and tokenizer throughput (tokens/s) on real data.

    .venv/bin/python benchmarks/bench_prep.py --per-file 150 --out benchmarks/results/prep_cpu.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import time
from pathlib import Path

from cifllm.data.filters import Canonical, FilterSettings
from cifllm.data.prep import PrepConfig, _init_worker, _work, collect_records
from cifllm.tokenization import build_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-file", type=int, default=150, help="records read from each registry file")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="benchmarks/results/prep_cpu.json")
    args = ap.parse_args()
    records, _ = collect_records(PrepConfig(limit_per_file=args.per_file))
    random.Random(0).shuffle(records)
    settings = FilterSettings()
    res: dict = {"records": len(records), "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor()}}
    _init_worker(settings)
    t = time.perf_counter()
    out = [_work(r) for r in records]
    res["canonicalize_cifs_per_s_1_worker"] = round(len(records) / (time.perf_counter() - t), 1)
    with mp.get_context("fork").Pool(args.workers, initializer=_init_worker, initargs=(settings,)) as pool:
        t = time.perf_counter()
        out = list(pool.imap(_work, records, chunksize=32))
        res[f"canonicalize_cifs_per_s_{args.workers}_workers"] = round(len(records) / (time.perf_counter() - t), 1)
    texts = [o.text for o in out if isinstance(o, Canonical)] * 5
    tok = build_tokenizer()
    t = time.perf_counter()
    encs = tok.encode_batch(texts, add_special_tokens=False)
    dt = time.perf_counter() - t
    n_tok = sum(len(e.ids) for e in encs)
    res["tokenizer_encode_batch_tokens_per_s"] = round(n_tok / dt)
    t = time.perf_counter()
    tok.decode_batch([e.ids for e in encs])
    res["tokenizer_decode_batch_tokens_per_s"] = round(n_tok / (time.perf_counter() - t))
    res["texts_tokenized"] = len(texts)
    res["date"] = time.strftime("%Y-%m-%d")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
