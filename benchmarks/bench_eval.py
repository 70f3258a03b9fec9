"""Evaluation throughput: per-sample checks (validity + self-consistency) and novelty against a large reference set,
serial (1 worker) vs parallel.

    .venv/bin/python benchmarks/bench_eval.py --reference data/corpus --samples-csv ../shared/data/mp_20/test_partial.csv.gz
    .venv/bin/python benchmarks/bench_eval.py --reference-csv A.csv.gz B.csv.gz ... --cache /tmp/ref.jsonl ...

Samples are real structures (canonical text) standing in for generated ones (all parse, so every check runs: the
slowest case per sample). The reference is a cifllm corpus folder, or CSV files with a ``cif`` column converted once
to canonical text (cached). Writes ``benchmarks/results/bench_eval.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _canonical_from_csv(paths: list[str], limit: int, seed: int = 0) -> list[str]:
    import warnings

    import pandas as pd

    from cifllm.cif import CIFError, structure_to_text
    from cifllm.cif.io import read_cif_text

    texts: list[str] = []
    for p in paths:
        df = pd.read_csv(p, usecols=lambda c: c == "cif")
        cifs = list(df["cif"])
        random.Random(seed).shuffle(cifs)
        for c in cifs:
            if len(texts) >= limit:
                return texts
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    texts.append(structure_to_text(read_cif_text(c)))
            except (CIFError, ValueError, TypeError):
                continue
    return texts


def _strained(texts: list[str], seed: int) -> list[str]:
    """Each structure with its lattice scaled by a random factor in [0.98, 1.02] (same structure within the
    matcher's tolerances, different text)."""
    import warnings

    from cifllm.cif import structure_to_text, text_to_structure

    rng = random.Random(seed)
    out = []
    for t in texts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = text_to_structure(t)
            s.scale_lattice(s.volume * rng.uniform(0.98, 1.02) ** 3)
            out.append(structure_to_text(s))
    return out


def _novelty_rows(set_name: str, nov: list[str], ref, workers: list[int], rows: list, novelty_stage, formula) -> None:
    formulas = [formula(t) for t in nov]
    with_refs = sum(bool(ref.buckets.get(f)) for f in formulas)
    compared = sum(len(ref.buckets.get(f, ())) for f in formulas)
    for w in workers:
        t0 = time.perf_counter()
        res = novelty_stage(nov, formulas, ref, workers=w, time_limit_s=60.0)
        wall = time.perf_counter() - t0
        rows.append(
            {
                "stage": f"novelty ({set_name})",
                "workers": w,
                "samples": len(nov),
                "reference": len(ref),
                "wall_s": round(wall, 2),
                "samples_per_s": round(len(nov) / wall, 1),
                "novel": sum(r[0] is True for r in res),
                "timeouts": sum(r[0] is None for r in res),
                "samples_with_refs_of_same_formula": with_refs,
                "references_in_their_buckets": compared,
            }
        )
        print(json.dumps(rows[-1]), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=None, help="corpus folder")
    ap.add_argument("--reference-csv", nargs="*", default=[], help="CSV files with a cif column (when no corpus)")
    ap.add_argument("--cache", default=None, help="JSONL cache of the canonical reference texts from --reference-csv")
    ap.add_argument("--samples-csv", required=True, help="CSV with a cif column: the stand-in samples")
    ap.add_argument("--n-checks", type=int, default=300, help="samples for the checks benchmark")
    ap.add_argument("--n-novelty", type=int, default=1000, help="samples for the novelty benchmark")
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_eval"))
    args = ap.parse_args(argv)

    from bench_sampling import _machine

    from cifllm.evaluation.checks import CheckSettings
    from cifllm.evaluation.matching import ReferenceIndex
    from cifllm.evaluation.run import evaluate_texts, novelty_stage

    samples = _canonical_from_csv([args.samples_csv], max(args.n_checks, args.n_novelty), seed=1)
    rows = []
    # ---- checks
    for w in args.workers:
        texts = samples[: args.n_checks]
        t0 = time.perf_counter()
        v = evaluate_texts(texts, CheckSettings(), workers=w, time_limit_s=60, uniqueness=False)
        wall = time.perf_counter() - t0
        rows.append({"stage": "checks (all per-sample checks)", "workers": w, "samples": len(texts), "reference": 0, "wall_s": round(wall, 2), "samples_per_s": round(len(texts) / wall, 1), "valid": sum(x["valid"] for x in v)})
        print(json.dumps(rows[-1]), flush=True)
    # ---- reference index
    t0 = time.perf_counter()
    if args.reference:
        ref = ReferenceIndex.from_corpus(args.reference)
        ref_src = args.reference
    else:
        cache = Path(args.cache) if args.cache else None
        if cache and cache.is_file():
            ref_texts = [json.loads(x) for x in cache.read_text().splitlines()]
        else:
            ref_texts = _canonical_from_csv(args.reference_csv, 10**9)
            if cache:
                cache.write_text("".join(json.dumps(t) + "\n" for t in ref_texts))
        t0 = time.perf_counter()
        ref = ReferenceIndex.from_texts(ref_texts)
        ref_src = ", ".join(args.reference_csv)
    index_s = time.perf_counter() - t0
    print(f"reference: {len(ref)} structures, {len(ref.buckets)} formulas, indexed in {index_s:.1f} s", flush=True)
    # ---- novelty (samples whose formula is in the reference are compared; the others are novel at once)
    from cifllm.cif import format_formula, parse_canonical

    def formula(t: str) -> str:
        from pymatgen.core import Composition

        return format_formula(Composition(parse_canonical(t).formula), reduced=True)

    sets = {
        "verbatim": samples[: args.n_novelty],  # canonical text identical to a reference (memorized samples)
        "strained": _strained(samples[: args.n_novelty], seed=2),  # +-2% lattice: every comparison runs the matcher
    }
    for set_name, nov in sets.items():
        _novelty_rows(set_name, nov, ref, args.workers, rows, novelty_stage, formula)
    result = {
        "benchmark": "evaluation",
        "date": dt.date.today().isoformat(),
        "machine": _machine(),
        "command": "python benchmarks/bench_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "reference_source": ref_src,
        "reference_size": len(ref),
        "reference_formulas": len(ref.buckets),
        "reference_index_s": round(index_s, 2),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    md = [
        f"# Evaluation throughput, {result['date']}",
        "",
        f"Machine: {result['machine']}.",
        f"Command: `{result['command']}`.",
        f"Samples: real structures from `{args.samples_csv}` (canonical text). Reference: {len(ref):,} structures in {len(ref.buckets):,} reduced-formula buckets ({ref_src}), indexed in {index_s:.1f} s.",
        "",
        "| stage | workers | samples | reference | wall s | samples/s |",
        "|---|---|---|---|---|---|",
    ]
    md += [f"| {r['stage']} | {r['workers']} | {r['samples']} | {r['reference']:,} | {r['wall_s']} | {r['samples_per_s']} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
