"""Validation of the DFT-anchored hull against Materials Project (matbench-discovery style).

Held-out structures: seeded samples of MP-20 test rows and MPTS-52 test rows (MP materials with a DFT formation
energy and MP's E_hull), at most ``--max-atoms`` atoms. The hull (:class:`cifllm.potentials.hull.DftHull`) is built
from every other DFT row of the shared data (MP-20 train/val/test, MPTS-52 val/test), the held-out material ids left
out. For each held-out structure:

(b) ``dft``: its own DFT formation energy placed on that hull: the error against MP's E_hull is the hull's
    incompleteness alone (the shared rows are a fraction of MP; a missing phase can only lower E_hull).
(a) ``<potential>_sp``: the potential's single point on the DFT-relaxed structure, its own elemental references
    (shipped), MP2020 scale: potential error plus incompleteness. Also the formation-energy MAE against DFT.
(a') ``<potential>_relaxed``: the same after relaxing with the potential (``--relax`` structures spread evenly
    over the sample, so both sources).
``vs_dft_on_same_hull``: (a) against (b) instead of MP's E_hull: the potential's error alone, hull held fixed.

Metrics (:func:`cifllm.potentials.validation.hull_metrics`): E_hull MAE / RMSE / mean error with bootstrap 95%
intervals, F1 / precision / recall of stable (E_hull <= 0) and metastable (<= 0.1 eV/atom). Per source too (MP-20
test rows all have MP E_hull < 0.08, so "metastable" is trivially all-positive there; MPTS-52 spans 0-5 eV/atom),
with/without oxygen, and by hull coverage (competing phases in the structure's chemical system).

    CIFLLM_DATA_DIR=../shared/data OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_hull.py \\
        --n-mp20 750 --n-mpts52 750 --relax 150 --potentials chgnet sevennet
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
import warnings
from pathlib import Path

from cifllm.cif.io import read_cif_text
from cifllm.potentials import RelaxSettings, available_potentials, get_potential
from cifllm.potentials.dft import dft_rows
from cifllm.potentials.hull import DftHull, HullScorer, formation_energy_per_atom
from cifllm.potentials.validation import error_stats, hull_metrics
from cifllm.utils import atomic_write_json


def _sample(rows, dataset: str, split: str, n: int, max_atoms: int, seed: int):
    pool = [r for r in rows if r.dataset == dataset and r.split == split and r.formation_energy_per_atom is not None and r.e_above_hull is not None and r.n_atoms <= max_atoms]
    random.Random(seed).shuffle(pool)
    return pool[:n], len(pool)


#: groups by the number of competing phases the hull holds in a structure's chemical system (its sub-systems included)
COVERAGE = ((0, 5), (5, 20), (20, 50), (50, None))


def _metrics_by_source(held, pred: list[float | None], n_boot: int, n_entries: list[int], truth: list[float] | None = None) -> dict:
    """Metrics over all held-out rows and per group: source dataset, with/without O (the MP2020 oxide correction),
    hull coverage. ``truth``: MP's E_hull (default) or another reference (e.g. the DFT energy on the same hull)."""
    true = truth if truth is not None else [r.e_above_hull for r in held]
    out = {}
    groups: dict[str, list[int]] = {"all": list(range(len(held)))}
    for i, r in enumerate(held):
        groups.setdefault(r.dataset, []).append(i)
        groups.setdefault("with_O" if any(el == "O" for el, _ in r.composition) else "without_O", []).append(i)
        lo, hi = next((lo, hi) for lo, hi in COVERAGE if n_entries[i] >= lo and (hi is None or n_entries[i] < hi))
        groups.setdefault(f"coverage_{lo}-{hi - 1}" if hi else f"coverage_{lo}+", []).append(i)
    for name, idx in groups.items():
        ok = [i for i in idx if pred[i] is not None]
        out[name] = {"n_rows": len(idx), "n_scored": len(ok), **hull_metrics([pred[i] for i in ok], [true[i] for i in ok], n_boot=n_boot)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n-mp20", type=int, default=750)
    ap.add_argument("--n-mpts52", type=int, default=750)
    ap.add_argument("--max-atoms", type=int, default=40)
    ap.add_argument("--relax", type=int, default=0, help="relax the first N held-out structures with each potential")
    ap.add_argument("--potentials", nargs="*", default=None, help="default: every installed backend")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/hull/hull_validation.json")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    rows = dft_rows(args.data_dir)
    held_a, pool_a = _sample(rows, "mp_20", "test", args.n_mp20, args.max_atoms, args.seed)
    held_b, pool_b = _sample(rows, "mpts_52", "test", args.n_mpts52, args.max_atoms, args.seed + 1)
    held = held_a + held_b
    hull = DftHull.from_rows(rows, exclude=[r.material_id for r in held], source="mp_20 + mpts_52 DFT rows minus held-out")
    print(f"{len(rows)} DFT rows; held out {len(held_a)} MP-20 test + {len(held_b)} MPTS-52 test; hull {len(hull.entries)} entries ({time.perf_counter() - t0:.1f} s)", flush=True)
    result: dict = {
        "what": "E_hull of held-out MP structures on the DFT-anchored hull vs MP's E_hull (eV/atom)",
        "held_out": {"mp_20_test": len(held_a), "mp_20_test_pool": pool_a, "mpts_52_test": len(held_b), "mpts_52_test_pool": pool_b, "max_atoms": args.max_atoms, "seed": args.seed},
        "hull": {"entries": len(hull.entries), "chemical_systems": len(hull.by_system), "source": hull.source},
        "truth": "MP e_above_hull of each row (MP-20: e_above_hull, MPTS-52: energy_above_hull)",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": 1, "note": "shared 2-core machine, nice 19"},
        "methods": {},
    }
    comps = [dict(r.composition) for r in held]

    # (b) DFT formation energies on the hull
    t1 = time.perf_counter()
    placed = [hull.e_above_hull(c, r.formation_energy_per_atom) for c, r in zip(comps, held, strict=True)]
    pred_dft = [p["e_above_hull"] for p in placed]
    n_entries = [p["hull_n_entries"] for p in placed]
    result["methods"]["dft"] = {"seconds": round(time.perf_counter() - t1, 2), "metrics": _metrics_by_source(held, pred_dft, args.n_boot, n_entries)}
    m = result["methods"]["dft"]["metrics"]["all"]
    print(f"dft: E_hull MAE {m['error']['mae']} stable F1 {m['stable']['f1']} metastable F1 {m['metastable']['f1']}", flush=True)

    structures = [read_cif_text(r.cif, r.id) for r in held]
    names = args.potentials if args.potentials is not None else available_potentials()
    per_structure = {"id": [r.id for r in held], "dft_e_above_hull": [r.e_above_hull for r in held], "dft_formation_energy_per_atom": [r.formation_energy_per_atom for r in held], "hull_n_entries": n_entries, "hull_dft": pred_dft}
    for name in names:
        pot = get_potential(name)
        scorer = HullScorer(pot, hull)
        t_load = time.perf_counter()
        pot.loaded()
        load_s = time.perf_counter() - t_load
        sps, sp_s = pot.timed_single_point(structures, args.batch_size)
        recs = [{"energy_per_atom": sp.energy_per_atom, "reason": sp.reason} if sp.energy_per_atom is None else {"energy_per_atom": sp.energy_per_atom, **scorer.place(s, sp.energy_per_atom)} for s, sp in zip(structures, sps, strict=True)]
        pred = [r.get("e_above_hull") for r in recs]
        ef = [r.get("formation_energy_per_atom") for r in recs]
        ok = [i for i, e in enumerate(ef) if e is not None]
        info = {
            "potential": pot.key,
            "energy_scale": pot.energy_scale,
            "references": scorer.references.meta,
            "load_s": round(load_s, 2),
            "single_point_s": round(sp_s, 2),
            "s_per_structure": round(sp_s / len(structures), 4),
            "batch_size": args.batch_size,
            "n_failed": len(held) - len(ok),
            "failed_reasons": sorted({str(r.get("reason") or r.get("hull_reason")) for r in recs if r.get("formation_energy_per_atom") is None}),
            "formation_energy_vs_dft": error_stats([ef[i] for i in ok], [held[i].formation_energy_per_atom for i in ok], args.n_boot),
            "metrics": _metrics_by_source(held, pred, args.n_boot, n_entries),
            "vs_dft_on_same_hull": _metrics_by_source(held, pred, args.n_boot, n_entries, truth=pred_dft),
        }
        if pot.energy_scale == "raw":  # the same without the MP2020 correction: what the correction is worth
            raw_ef = []
            for i in ok:
                raw_ef.append(formation_energy_per_atom(comps[i], float(sps[i].energy_per_atom), scorer.references.energies))
            info["formation_energy_vs_dft_without_mp2020"] = error_stats(raw_ef, [held[i].formation_energy_per_atom for i in ok], args.n_boot)
        result["methods"][f"{name}_sp"] = info
        per_structure[f"{name}_sp_e_above_hull"] = pred
        per_structure[f"{name}_sp_formation_energy_per_atom"] = ef
        m = info["metrics"]["all"]
        print(f"{name} single point: {sp_s:.1f} s ({info['s_per_structure']} s/structure); E_f MAE {info['formation_energy_vs_dft']['mae']}; E_hull MAE {m['error']['mae']} stable F1 {m['stable']['f1']} metastable F1 {m['metastable']['f1']}", flush=True)
        if args.relax:
            k = min(args.relax, len(held))
            sub = sorted({int(j * len(held) / k) for j in range(k)})  # evenly spread: both sources
            settings = RelaxSettings(fmax=0.05, max_steps=500)
            t2 = time.perf_counter()
            rr = scorer.score([structures[i] for i in sub], relax=True, settings=settings)
            rel_s = time.perf_counter() - t2
            rpred: list[float | None] = [None] * len(held)
            for i, r in zip(sub, rr, strict=True):
                rpred[i] = r.get("e_above_hull")
            sub_held = [held[i] for i in sub]
            info_r = {
                "potential": pot.key,
                "relax_settings": json.loads(settings.key()),
                "n": len(sub),
                "n_converged": sum(bool(r.get("converged")) for r in rr),
                "seconds": round(rel_s, 1),
                "s_per_structure": round(rel_s / max(1, len(sub)), 3),
                "metrics": _metrics_by_source(sub_held, [rpred[i] for i in sub], args.n_boot, [n_entries[i] for i in sub]),
                "vs_dft_on_same_hull": _metrics_by_source(sub_held, [rpred[i] for i in sub], args.n_boot, [n_entries[i] for i in sub], truth=[pred_dft[i] for i in sub]),
                "same_structures_single_point": _metrics_by_source(sub_held, [pred[i] for i in sub], args.n_boot, [n_entries[i] for i in sub]),
                "same_structures_dft": _metrics_by_source(sub_held, [pred_dft[i] for i in sub], args.n_boot, [n_entries[i] for i in sub]),
            }
            result["methods"][f"{name}_relaxed"] = info_r
            per_structure[f"{name}_relaxed_e_above_hull"] = rpred
            m = info_r["metrics"]["all"]
            print(f"{name} relaxed ({len(sub)}): {rel_s:.0f} s; E_hull MAE {m['error']['mae']} stable F1 {m['stable']['f1']}", flush=True)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    atomic_write_json(out, result)
    atomic_write_json(out.with_name(out.stem + "_per_structure.json"), per_structure)
    print(f"wrote {out} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()
