"""Stability stage benchmark (CHGNet on this CPU): seconds per relaxation vs atoms, samples/s with 1 and 2 workers,
hull-building cost per chemical system, and the stable / metastable / S.U.N. table for real held-out MP-20
structures, the template baseline and (optionally) a model's de novo samples.

Reference for the hull and novelty: MP-20 train + val (the partial files in ``--mp20``), canonicalized only where a
sample needs them (rows whose element set is a subset of a sample's), at most ``--refs-per-system`` per exact
chemical system, lowest DFT E_hull first (those define the hull). Real held-out samples: MP-20 test rows (seeded)
whose elements all have a pure phase in train + val (most elements do not in these partial files: the share is
reported). Template baseline: ``TemplateBaseline.denovo`` on canonicalized MP-20 train rows.

    python benchmarks/bench_stability.py --mp20 $CIFLLM_DATA_DIR/mp_20 --out benchmarks/results/stability_cpu.json \\
        --model-samples runs/model-denovo/samples.jsonl
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import random
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def _load_mp20(d: Path):
    import pandas as pd

    ref = pd.concat([pd.read_csv(d / "train_partial.csv.gz"), pd.read_csv(d / "val_partial.csv.gz")], ignore_index=True)
    test = pd.read_csv(d / "test_partial.csv.gz")
    for df in (ref, test):
        df["els"] = [tuple(sorted(ast.literal_eval(e))) for e in df["elements"]]
    return ref, test


def _mpts52_elements(d: Path):
    """Pure-element rows of MPTS-52 val + test (MP structures too), to add elemental references MP-20's partial
    files lack; columns as in :func:`_load_mp20`."""
    import re

    import pandas as pd
    from pymatgen.core import Composition

    df = pd.concat([pd.read_csv(d / "val.csv.gz"), pd.read_csv(d / "test.csv.gz")], ignore_index=True)
    els = []
    for cif in df["cif"]:
        m = re.search(r"_chemical_formula_sum\s+'?([^\n']+)", cif)
        els.append(tuple(sorted(e.symbol for e in Composition(m.group(1)).elements)) if m else ())
    df["els"] = els
    df = df[[len(e) == 1 for e in els]].rename(columns={"energy_above_hull": "e_above_hull"})
    return df[["material_id", "cif", "e_above_hull", "els"]]


def _canon(cif: str) -> str | None:
    from pymatgen.core import Structure

    from cifllm.cif import structure_to_text

    try:
        return structure_to_text(Structure.from_str(cif, fmt="cif"))
    except Exception:
        return None


def _reference_for(ref_df, element_sets, per_system: int):
    """HullReference + ReferenceIndex of the MP-20 rows whose element set is a subset of one of ``element_sets``."""
    from pymatgen.core import Composition

    from cifllm.cif import format_formula
    from cifllm.evaluation.matching import ReferenceIndex
    from cifllm.evaluation.stability import HullReference

    wanted = [set(e) for e in element_sets]
    rows = ref_df[[any(set(e) <= w for w in wanted) for e in ref_df["els"]]].sort_values(["e_above_hull", "material_id"])
    rows = rows.groupby("els", sort=False).head(per_system)
    ids, texts, formulas = [], [], []
    for mid, cif in zip(rows["material_id"], rows["cif"]):
        t = _canon(cif)
        if t is None:
            continue
        ids.append(str(mid))
        texts.append(t)
        formulas.append(format_formula(Composition(t.split("\n", 1)[0][5:]), reduced=True))
    hull = HullReference({})
    # keep the DFT-E_hull order inside a system (from_records would order by cell size)
    from cifllm.evaluation.stability import _chemsys

    for i, t, f in zip(ids, texts, formulas):
        hull.systems.setdefault(_chemsys(e.symbol for e in Composition(f).elements), []).append((i, t))
    return hull, ReferenceIndex.from_records(texts, formulas, ids)


def _sun_table(name, texts, ids, hull, index, settings, cache, workers):
    from cifllm.evaluation.run import evaluate_texts
    from cifllm.evaluation.stability import run_stability, summarize_stability

    t0 = time.perf_counter()
    verd = evaluate_texts(texts, workers=workers, time_limit_s=60, reference=index)
    recs, stats = run_stability(texts, ids, verd, hull, settings, cache)
    st = summarize_stability(recs, verd, settings, stats)
    st["name"] = name
    st["seconds"] = round(time.perf_counter() - t0, 1)
    st["e_above_hull_values"] = sorted(r["e_above_hull"] for r in recs if r.get("e_above_hull") is not None)
    st["rmsd_values"] = sorted(r["rmsd_A"] for r in recs if r.get("rmsd_A") is not None and r.get("converged"))
    st.pop("definitions", None)
    st.pop("caveats", None)
    return st, recs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mp20", type=Path, default=Path(os.environ.get("CIFLLM_DATA_DIR", "../shared/data")) / "mp_20")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/stability_cpu.json"))
    ap.add_argument("--cache", type=Path, default=Path("runs/bench-stability-cache"))
    ap.add_argument("--parts", default="timing,workers,hull,sun")
    ap.add_argument("--n-timing", type=int, default=8)
    ap.add_argument("--n-workers-items", type=int, default=12)
    ap.add_argument("--n-real", type=int, default=30)
    ap.add_argument("--n-template", type=int, default=30)
    ap.add_argument("--model-samples", type=Path, default=None, help="samples.jsonl of a `cifllm sample` de novo run")
    ap.add_argument("--refs-per-system", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mpts52-elements", type=Path, default=None, help="mpts_52 folder: add its pure-element rows as elemental references")
    a = ap.parse_args(argv)

    import chgnet
    import torch

    from cifllm.cif import text_to_structure
    from cifllm.evaluation.stability import StabilitySettings, _relax_many, potential_key, prepare_hull, relax_structure

    parts = set(a.parts.split(","))
    res: dict = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "chgnet": chgnet.__version__, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
        "potential": potential_key(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if a.out.is_file():
        res = {**json.loads(a.out.read_text()), **res}
    settings = StabilitySettings(workers=0)
    ref_df, test_df = _load_mp20(a.mp20)
    rng = random.Random(a.seed)
    t_load = time.perf_counter()
    relax_structure(text_to_structure(_canon(test_df["cif"][0])), settings)  # loads the model in this process
    res["model_load_and_first_relax_s"] = round(time.perf_counter() - t_load, 2)

    def save():
        res["machine"]["load_avg_end"] = os.getloadavg()
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")

    if "timing" in parts:
        from pymatgen.core import Structure

        rows = []
        by_n: dict[int, list[int]] = {}
        for i, cif in enumerate(test_df["cif"][:2000]):
            by_n.setdefault(len(Structure.from_str(cif, fmt="cif")), []).append(i)
        sizes = sorted(by_n)
        pick = [sizes[round(k * (len(sizes) - 1) / max(1, a.n_timing - 1))] for k in range(a.n_timing)]
        import numpy as np

        cases = [(n, rng.choice(by_n[n]), 1) for n in dict.fromkeys(pick)]
        cases += [(cases[-1][0] * m, cases[-1][1], m) for m in (2, 4)]  # supercells of the largest: 2x1x1, 2x2x1
        for n, i, m in cases:
            s = Structure.from_str(test_df["cif"][i], fmt="cif")
            if m > 1:
                s.make_supercell([2, 1 if m == 2 else 2, 1])
            np.random.seed(a.seed)
            s.apply_strain(0.03)
            s.perturb(0.1)  # MP structures are DFT minima: displace them so the optimizer has work to do
            r = relax_structure(s, StabilitySettings(workers=0, primitive=False))
            rows.append({"material_id": test_df["material_id"][i], "n_atoms": n, "steps": r["steps"], "seconds": r["time_s"], "s_per_step": round(r["time_s"] / max(1, (r["steps"] or 0) + 1), 4), "reason": r["reason"]})
            print("timing", rows[-1], flush=True)
        res["timing_vs_atoms"] = {"settings": "MP-20 test structures strained 3% and rattled 0.1 A (seeded), then FIRE + FrechetCellFilter, fmax 0.1 eV/A, <= 500 steps, the MP cell as given (primitive=False; the two largest are 2x and 4x supercells), 1 torch thread, in process", "rows": rows}
        save()

    if "workers" in parts:
        idx = rng.sample(range(len(test_df)), a.n_workers_items)
        texts = [t for t in (_canon(test_df["cif"][i]) for i in idx) if t]
        out = {}
        for w in (1, 2):
            t0 = time.perf_counter()
            recs = _relax_many(texts, StabilitySettings(workers=w, time_limit_s=300))
            dt = time.perf_counter() - t0
            out[str(w)] = {"n": len(texts), "seconds": round(dt, 1), "samples_per_s": round(len(texts) / dt, 3), "reasons": {str(k): sum(r.get("reason") == k for r in recs) for k in {r.get("reason") for r in recs}}}
            print("workers", w, out[str(w)], flush=True)
        res["workers"] = {"note": "process pool of map_with_time_limit, each worker loads CHGNet once (included); 2-core machine shared with other jobs", "rows": out}
        save()

    if "hull" in parts or "sun" in parts:
        unary = {e[0] for e in ref_df["els"] if len(e) == 1}
        covered = [all(x in unary for x in e) for e in test_df["els"]]
        res["elemental_coverage"] = {"unary_elements_in_train_val": sorted(unary), "test_rows_all_elements_covered": int(sum(covered)), "test_rows": len(test_df)}
        real_idx = rng.sample([i for i, c in enumerate(covered) if c], a.n_real)
        real_texts = [_canon(test_df["cif"][i]) for i in real_idx]
        real = [(f"mp20-test:{test_df['material_id'][i]}", t) for i, t in zip(real_idx, real_texts) if t]
        from cifllm.bench.baselines import TemplateBaseline

        train_texts = [t for t in (_canon(c) for c in ref_df["cif"].sample(n=600, random_state=a.seed)) if t]
        tb = TemplateBaseline(train_texts, seed=a.seed)
        template = [(f"template:{k}", t) for k, t in enumerate(tb.denovo(a.n_template))]
        model: list[tuple[str, str]] = []
        if a.model_samples and a.model_samples.is_file():
            from cifllm.sampling.run import read_samples

            model = [(str(s["sample_id"]), str(s.get("cif_text") or "")) for s in read_samples(a.model_samples)]
        from cifllm.evaluation.stability import _elements_of

        groups = {"real_mp20_test": real, "template_baseline": template, "default_model": model}
        el_sets = [tuple(_elements_of(t)) for g in groups.values() for _, t in g]
        el_sets = [e for e in el_sets if e]
        t0 = time.perf_counter()
        source = "MP-20 train_partial + val_partial"
        if a.mpts52_elements:
            import pandas as pd

            if "hull_cost" in res and "hull" not in parts:
                res["hull_cost"].setdefault("reference", res.get("reference"))
            ref_df = pd.concat([ref_df, _mpts52_elements(a.mpts52_elements)], ignore_index=True)
            source += " + pure-element rows of MPTS-52 val/test"
        hull, index = _reference_for(ref_df, el_sets, a.refs_per_system)
        res["reference"] = {"source": source, "refs_per_system": a.refs_per_system, "n_structures": len(index), "n_systems": len(hull.systems), "build_s": round(time.perf_counter() - t0, 1)}
        print("reference", res["reference"], flush=True)
        if "hull" in parts:
            systems = sorted({s for e in el_sets for s in hull.subsystems(e)})
            cost = prepare_hull(hull, systems, StabilitySettings(workers=2, max_refs_per_system=a.refs_per_system, time_limit_s=300), a.cache)
            relaxed = {k: v for k, v in cost.items() if v["relaxed"]}
            secs = sorted(v["seconds"] for v in relaxed.values())
            res["hull_cost"] = {
                "n_systems": len(cost),
                "n_systems_relaxed_now": len(relaxed),
                "references_relaxed": sum(v["relaxed"] for v in relaxed.values()),
                "reference_failures": sum(v["failed"] for v in cost.values()),
                "seconds_per_system": {"median": secs[len(secs) // 2] if secs else None, "max": secs[-1] if secs else None, "total": round(sum(secs), 1)},
                "seconds_per_reference": round(sum(secs) / max(1, sum(v["relaxed"] for v in relaxed.values())), 3),
                "by_n_elements": {str(k): {"systems": sum(1 for s in relaxed if s.count("-") + 1 == k), "mean_s": round(sum(v["seconds"] for s, v in relaxed.items() if s.count("-") + 1 == k) / max(1, sum(1 for s in relaxed if s.count("-") + 1 == k)), 2)} for k in (1, 2, 3, 4)},
                "note": "2 worker processes (forked per system from a parent that has the model loaded); a rerun is free (cache)",
            }
            print("hull", res["hull_cost"], flush=True)
            save()
        if "sun" in parts:
            res["sun"] = {}
            for name, items in groups.items():
                if not items:
                    continue
                st, _ = _sun_table(name, [t for _, t in items], [i for i, _ in items], hull, index, StabilitySettings(workers=2, max_refs_per_system=a.refs_per_system, time_limit_s=300), a.cache, workers=1)
                res["sun"][name] = st
                r = st["rates"]
                print("sun", name, st["n_samples"], st["n_e_hull"], {k: r[k]["rate"] for k in r}, st["reasons"], flush=True)
                save()
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
