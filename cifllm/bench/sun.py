"""S.U.N. and M.S.U.N. of a benchmark row's de novo samples on the DFT-anchored hull.

A row's samples (``rows/<row>.samples.jsonl[.gz]``, :mod:`cifllm.bench.rows`) already carry their verdicts ``valid``,
``unique`` (within the row) and ``novel`` (against the task's reference corpus). Here the first ``n`` de novo
samples get an energy: a universal potential's single point on the structure *as generated* (no relaxation), its
formation energy from the potential's elemental references, and E_hull on the DFT hull (:mod:`cifllm.potentials`).

* **S.U.N.**: share of the ``n`` samples that are valid, unique, novel and stable (E_hull <= 0 eV/atom);
  **M.S.U.N.**: the same with metastable (E_hull <= 0.1 eV/atom). Wilson 95% intervals; the denominator is every
  sample, so invalid and unscored ones count against the rate.
* **coverage**: share of valid samples with an E_hull (the rest: unsupported element, too many atoms, exploding
  energy - counted by reason).
* How it differs from MatterGen's S.U.N. (~39%): MatterGen relaxes with DFT and places on a DFT hull of Alex-MP-20
  (~850k phases); here the energy is a single point of the unrelaxed sample with a universal potential and the hull
  holds the MP-20 + MPTS-52 phases. An unrelaxed structure sits above its relaxed energy, so this S.U.N. is a lower
  bound of the potential-relaxed one, while the sparser hull pushes the other way (a missing phase lowers E_hull).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from cifllm.bench.stats import rate
from cifllm.cif import CIFError, text_to_structure
from cifllm.potentials.hull import DftHull, HullScorer

__all__ = ["EHULL_BINS", "sun_of_samples"]

#: E_hull histogram bin edges, eV/atom (the last bin is open)
EHULL_BINS: tuple[float, ...] = (-0.2, 0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def _histogram(values: Sequence[float]) -> dict[str, int]:
    edges = EHULL_BINS
    out = {f"< {edges[0]}": sum(v < edges[0] for v in values)}
    for lo, hi in zip(edges, edges[1:], strict=False):
        out[f"[{lo}, {hi})"] = sum(lo <= v < hi for v in values)
    out[f">= {edges[-1]}"] = sum(v >= edges[-1] for v in values)
    return out


def sun_of_samples(
    samples: Sequence[dict[str, Any]], scorer: HullScorer | None = None, hull: DftHull | None = None, n: int = 300, potential: Any = None,
    cache: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """S.U.N. / M.S.U.N. of the first ``n`` de novo records of ``samples`` (records with ``kind``, ``text``,
    ``valid``, ``unique``, ``novel``; see the module docstring). ``scorer``: a :class:`HullScorer` to reuse (else one
    of ``potential`` on ``hull``). Returns rates with intervals, coverage, reasons, the E_hull histogram and the
    seconds spent on energies."""
    if scorer is None:
        if potential is None or hull is None:
            raise ValueError("give a scorer, or a potential and a hull")
        scorer = HullScorer(potential, hull)
    dn = [r for r in samples if r.get("kind") == "denovo"][:n]
    cache = {} if cache is None else cache
    structures, texts = [], []
    reasons: Counter[str] = Counter()
    pending: set[str] = set()
    for r in dn:
        if not r.get("valid") or r["text"] in cache or r["text"] in pending:
            continue
        pending.add(r["text"])
        try:
            structures.append(text_to_structure(r["text"]))
            texts.append(r["text"])
        except CIFError:
            cache[r["text"]] = {"e_above_hull": None, "reason": "parse_error"}
    t0 = time.perf_counter()
    for t, rec in zip(texts, scorer.score(structures) if structures else [], strict=True):
        cache[t] = {k: rec.get(k) for k in ("e_above_hull", "reason", "hull_reason", "energy_per_atom")}
    seconds = time.perf_counter() - t0
    e_hull: list[float | None] = [None] * len(dn)
    for i, r in enumerate(dn):
        if not r.get("valid"):
            continue
        rec = cache[r["text"]]
        e_hull[i] = rec.get("e_above_hull")
        if rec.get("e_above_hull") is None:
            reasons[str(rec.get("reason") or rec.get("hull_reason") or "no_energy")] += 1
    n_valid = sum(bool(r.get("valid")) for r in dn)
    un = [bool(r.get("valid") and r.get("unique") and r.get("novel")) for r in dn]
    measured = [x for x in e_hull if x is not None]
    stable = sum(u and x is not None and x <= 0.0 for u, x in zip(un, e_hull, strict=True))
    meta = sum(u and x is not None and x <= 0.1 for u, x in zip(un, e_hull, strict=True))
    novelty_measured = all(r.get("novel") is not None for r in dn if r.get("valid"))
    return {
        "n": len(dn),
        "n_valid": n_valid,
        "n_unique_novel": sum(un),
        "energy": "single point of the sample as generated (unrelaxed)",
        "potential": scorer.potential.key if hasattr(scorer.potential, "key") else str(scorer.potential),
        "hull": scorer.hull.source,
        "coverage": rate(len(measured), n_valid),
        "no_e_hull_reasons": dict(reasons),
        "sun": rate(stable, len(dn)) if novelty_measured else None,
        "msun": rate(meta, len(dn)) if novelty_measured else None,
        "stable_valid": rate(sum(x <= 0.0 for x in measured), n_valid),
        "metastable_valid": rate(sum(x <= 0.1 for x in measured), n_valid),
        "e_hull_median": sorted(measured)[len(measured) // 2] if measured else None,
        "e_hull_histogram": _histogram(measured),
        "energy_seconds": round(seconds, 2),
        "n_scored_here": len(structures),
        "seconds_per_structure": round(seconds / len(structures), 4) if structures else None,
    }
