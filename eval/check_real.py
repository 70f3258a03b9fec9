"""Run the per-sample checks on real structures: the share that passes, and every failure with its reason.

    .venv/bin/python eval/check_real.py --corpus data/corpus --n 2000 --out results/check_real.json
    .venv/bin/python eval/check_real.py --csv ../shared/data/mp_20/test_partial.csv.gz --n 1000 --out ...

Real structures are the control: a check that rejects more than ~1% of them is too strict (issue 4).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path


def _texts_from_csv(path: str, n: int, seed: int) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    import pandas as pd

    from cifllm.cif import CIFError, structure_to_text
    from cifllm.cif.io import read_cif_text

    df = pd.read_csv(path)
    idx = list(range(len(df)))
    random.Random(seed).shuffle(idx)
    texts, ids, skipped = [], [], []
    for i in idx[:n]:
        rid = str(df["material_id"].iloc[i]) if "material_id" in df else str(i)
        try:
            texts.append(structure_to_text(read_cif_text(df["cif"].iloc[i], rid)))
            ids.append(rid)
        except CIFError as exc:  # not a check failure: the structure never became canonical text
            skipped.append((rid, exc.reason))
    return texts, ids, skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", help="cifllm corpus folder")
    src.add_argument("--csv", help="CSV with a 'cif' column (CDVAE benchmark format)")
    ap.add_argument("--n", type=int, default=1000, help="random structures to check (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per structure")
    ap.add_argument("--out", required=True, help="JSON report path")
    args = ap.parse_args(argv)

    from cifllm.evaluation.checks import CHECK_NAMES, CheckSettings
    from cifllm.evaluation.run import evaluate_texts
    from cifllm.utils import atomic_write_json

    skipped: list[tuple[str, str]] = []
    if args.corpus:
        from cifllm.data.corpus import load_corpus

        ds = load_corpus(args.corpus)
        if args.n and args.n < len(ds):
            ds = ds.shuffle(seed=args.seed).select(range(args.n))
        texts, ids = list(ds["text"]), list(ds["id"])
        source = args.corpus
    else:
        texts, ids, skipped = _texts_from_csv(args.csv, args.n or 10**9, args.seed)
        source = args.csv
    t0 = time.perf_counter()
    verdicts = evaluate_texts(texts, CheckSettings(), workers=args.workers, time_limit_s=args.time_limit, uniqueness=False)
    wall = time.perf_counter() - t0
    n = len(verdicts)
    per_check = {c: sum(v["checks"][c]["ok"] is True for v in verdicts) / n for c in CHECK_NAMES} if n else {}
    failures = [
        {"id": i, "formula": t.splitlines()[0][5:], "reason": v["reason"], "failed": {c: r["detail"] for c, r in v["checks"].items() if r["ok"] is False}}
        for i, t, v in zip(ids, texts, verdicts, strict=True)
        if not v["valid_all"]
    ]
    report = {
        "source": source,
        "n_checked": n,
        "n_not_canonicalizable": len(skipped),
        "pass_rate_valid_all": sum(bool(v["valid_all"]) for v in verdicts) / n if n else None,
        "pass_rate_valid": sum(bool(v["valid"]) for v in verdicts) / n if n else None,
        "pass_rate_consistent": sum(bool(v["consistent"]) for v in verdicts) / n if n else None,
        "pass_rate_per_check": per_check,
        "failure_reasons": dict(Counter(f["reason"] for f in failures).most_common()),
        "failures": failures,
        "not_canonicalizable": skipped,
        "wall_s": round(wall, 2),
        "structures_per_s": round(n / wall, 2) if wall else None,
        "workers": args.workers,
    }
    atomic_write_json(Path(args.out), report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("failures", "not_canonicalizable")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
