"""S.U.N. / M.S.U.N. of every benchmark row's de novo samples on the DFT-anchored hull (:mod:`cifllm.bench.sun`).

Reads the committed rows (``<bench>/<task>/rows/<row>.samples.jsonl.gz``, with their valid / unique / novel verdicts),
scores the first ``--n`` de novo samples of each row with a universal potential (single point, unrelaxed) on the
default DFT hull (built from the data once, cached), and writes ``<out>/sun.json`` and ``<out>/SUN.md``. Energies are cached by text across rows, and
finished rows are kept in ``sun.json`` (a rerun only scores the missing ones).

    python benchmarks/bench_sun.py [--bench benchmarks/results/bench] [--out benchmarks/results/sun] [--n 300]
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import time
from pathlib import Path

from cifllm.bench.sun import sun_of_samples
from cifllm.potentials import get_potential
from cifllm.potentials.hull import HullScorer
from cifllm.potentials.hull_table import load_default_hull
from cifllm.utils import atomic_write_json, atomic_write_text


def _read(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(x) for x in f if x.strip()]


def _fmt(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return "n/a"
    lo, hi = r["ci95"]
    return f"{100 * r['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", default="benchmarks/results/bench")
    ap.add_argument("--out", default="benchmarks/results/sun")
    ap.add_argument("--n", type=int, default=300, help="de novo samples per row")
    ap.add_argument("--potential", default="chgnet")
    a = ap.parse_args()
    out = Path(a.out)
    res_path = out / "sun.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else {"rows": {}}
    scorer = HullScorer(get_potential(a.potential), load_default_hull())
    cache: dict[str, dict] = {}
    t0 = time.perf_counter()
    for f in sorted(Path(a.bench).glob("*/rows/*.samples.jsonl.gz")):
        task, row = f.parent.parent.name, f.name.split(".samples")[0]
        key = f"{task}/{row}"
        if key in res["rows"] and res["rows"][key].get("n_requested") == a.n:
            continue
        r = sun_of_samples(_read(f), scorer, n=a.n, cache=cache)
        r["n_requested"] = a.n
        res["rows"][key] = r
        res.update(machine=f"{platform.node()} ({platform.processor() or platform.machine()}), 2 CPU cores shared", date=time.strftime("%Y-%m-%d"),
                   command=f"python benchmarks/bench_sun.py --n {a.n} --potential {a.potential}")
        atomic_write_json(res_path, res)
        print(f"{key}: S.U.N. {_fmt(r['sun'])}, M.S.U.N. {_fmt(r['msun'])}, coverage {_fmt(r['coverage'])} ({time.perf_counter() - t0:.0f} s)", flush=True)
    lines = [
        f"S.U.N. / M.S.U.N. of the first {a.n} de novo samples of every benchmark row: {a.potential} single point of the sample as generated "
        "(unrelaxed) on the default DFT hull (MP-20 + MPTS-52 phases, elements at 0); unique within the row, novel against the task's reference "
        "(the row's own verdicts). Denominator: all samples. Wilson 95% intervals.",
        "",
        "| task | row | n | valid | S.U.N. | M.S.U.N. | stable among valid | E_hull coverage (valid) | median E_hull (eV/atom) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in sorted(res["rows"].items()):
        task, row = key.split("/")
        med = f"{r['e_hull_median']:.3f}" if r.get("e_hull_median") is not None else "n/a"
        lines.append(f"| {task} | {row} | {r['n']} | {r['n_valid']} | {_fmt(r['sun'])} | {_fmt(r['msun'])} | {_fmt(r['stable_valid'])} | {_fmt(r['coverage'])} | {med} |")
    atomic_write_text(out / "SUN.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
