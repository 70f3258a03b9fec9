"""``cifllm tokenizer``: save the tokenizer artifact; with ``--corpus``, check the round trip on every row.

Inputs are checked before anything is written: a missing or broken corpus, or a ``--report`` path that is a folder,
ends the run (one line, exit code 2) with no tokenizer folder created."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cifllm.core.errors import CifllmError
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
    ds = load_corpus(args.corpus) if args.corpus else None  # validated before anything is written
    report = None
    if args.corpus:
        report = Path(args.report) if args.report else Path(args.corpus) / "tokenizer_check.json"
        if report.is_dir():
            raise CifllmError(f"--report {report}: is a directory, expected a file path for the JSON report")
    elif args.report:
        raise CifllmError("--report needs --corpus (the report is the round-trip check of a corpus)")
    if Path(args.out).is_file():
        raise CifllmError(f"--out {args.out}: is a file, expected a folder for the tokenizer")
    out = save_tokenizer(args.out)
    print(f"tokenizer saved to {out} (fingerprint {tokenizer_fingerprint()})")
    if ds is None or report is None:
        return 0
    rep = check_round_trip(ds["text"])
    lengths = sorted(rep.lengths)
    summary = {
        "n": rep.n,
        "exact": rep.n_exact,
        "exact_fraction": rep.exact_fraction,
        "with_unk": rep.n_unk,
        "tokens_min": lengths[0] if lengths else None,
        "tokens_median": lengths[len(lengths) // 2] if lengths else None,
        "tokens_max": lengths[-1] if lengths else None,
        "failures": rep.failures,
    }
    atomic_write_json(report, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}))
    return 0 if rep.n_exact == rep.n else 1
