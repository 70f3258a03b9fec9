"""``cifllm tokenizer``: save the tokenizer artifact; with ``--corpus``, check the round trip on every row."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cifllm.data.corpus import load_corpus
from cifllm.tokenization import TOKENIZER_VERSION, check_round_trip, save_tokenizer, tokenizer_fingerprint
from cifllm.utils import atomic_write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default=f"tokenizer/{TOKENIZER_VERSION}", help="folder for tokenizer.json + configs (default: %(default)s, the current version)"
    )
    p.add_argument("--corpus", default=None, help="corpus folder: check decode(encode(text)) == text on every row")
    p.add_argument("--report", default=None, help="write the round-trip report JSON here (default: <corpus>/tokenizer_check.json)")


def run(args: argparse.Namespace) -> int:
    out = save_tokenizer(args.out)
    print(f"tokenizer saved to {out} (fingerprint {tokenizer_fingerprint()})")
    if not args.corpus:
        return 0
    ds = load_corpus(args.corpus)
    rep = check_round_trip(ds["text"])
    lengths = sorted(rep.lengths)
    summary = {
        "n": rep.n,
        "exact": rep.n_exact,
        "exact_fraction": rep.exact_fraction,
        "with_unk": rep.n_unk,
        "tokens_min": lengths[0],
        "tokens_median": lengths[len(lengths) // 2],
        "tokens_max": lengths[-1],
        "failures": rep.failures,
    }
    path = Path(args.report) if args.report else Path(args.corpus) / "tokenizer_check.json"
    atomic_write_json(path, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}))
    return 0 if rep.n_exact == rep.n else 1
