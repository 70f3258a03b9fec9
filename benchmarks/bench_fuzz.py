"""Fuzz report: damaged inputs through every untrusted-input path (see :mod:`cifllm.fuzz`) -> benchmarks/results/fuzz.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_fuzz.py --prep 600 --checks 150 --evaluate 20 --tokenizer 300 --seed 0

Besides the mixed runs, ``--issue31`` inputs per path go through the mutators of the issue-31 input classes in turn
(:data:`cifllm.fuzz.ISSUE31_MUTATORS`), and ``--nested 1`` feeds deeply nested JSON/YAML to the CLI stages.

Per path: inputs tried, crashes (an exception escaped or a check reported check_crashed), hangs (an input over
--hang-s seconds), outcomes without a reason, outcomes by reason, slowest input; prep also counts kept records whose
composition disagrees with their own _chemical_formula_sum (silent corruption). Peak memory: ru_maxrss of this
process (every path runs in it; the prep/check time limits use SIGALRM, no worker processes).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
import warnings

from cifllm import fuzz
from cifllm.utils import atomic_write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prep", type=int, default=600)
    ap.add_argument("--checks", type=int, default=150)
    ap.add_argument("--evaluate", type=int, default=20)
    ap.add_argument("--tokenizer", type=int, default=300)
    ap.add_argument("--issue31", type=int, default=140, help="inputs per path (prep, checks) drawn from the issue-31 mutators in turn")
    ap.add_argument("--nested", type=int, default=1, help="1: run the deeply nested JSON/YAML CLI inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang-s", type=float, default=10.0)
    ap.add_argument("--out", default="benchmarks/results/fuzz.json")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    paths = []
    runs = (
        ("prep", fuzz.fuzz_prep, args.prep),
        ("checks", fuzz.fuzz_checks, args.checks),
        ("prep_issue31", functools.partial(fuzz.fuzz_prep, only=fuzz.ISSUE31_MUTATORS), args.issue31),
        ("checks_issue31", functools.partial(fuzz.fuzz_checks, only=fuzz.ISSUE31_MUTATORS), args.issue31 // 2),
        ("evaluate", fuzz.fuzz_evaluate, args.evaluate),
        ("input_files", lambda n, seed, hang_s: fuzz.fuzz_input_files(0, seed=seed, hang_s=max(hang_s, 60.0)), args.nested),
        ("tokenizer", fuzz.fuzz_tokenizer, args.tokenizer),
    )
    for name, fn, n in runs:
        if n <= 0:
            continue
        rep = fn(n, seed=args.seed, hang_s=args.hang_s).to_json()
        rep["path"] = f"{rep['path']} ({name})" if name.endswith("issue31") else rep["path"]
        rep["peak_rss_mb_after"] = fuzz.peak_rss_mb()["self"]
        paths.append(rep)
        print(f"{name}: {rep['inputs']} inputs, {rep['crashes']} crashes, {rep['hangs']} hangs, {rep['no_reason']} without reason, max {rep['max_seconds_per_input']} s ({rep['seconds']} s)", flush=True)
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_fuzz.py " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "hang_threshold_s": args.hang_s,
        "paths": paths,
        "totals": {k: sum(p[k] for p in paths) for k in ("inputs", "crashes", "hangs", "no_reason")},
        "silent_corruption": next((p.get("silent_corruption") for p in paths if p["path"].startswith("prep")), None),
        "peak_rss_mb": fuzz.peak_rss_mb()["self"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(), "omp_threads": os.environ.get("OMP_NUM_THREADS")},
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_json(args.out, result)
    print(f"totals {result['totals']}, silent corruption {result['silent_corruption']}, peak RSS {result['peak_rss_mb']} MB, {result['wall_s']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
