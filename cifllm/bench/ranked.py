"""Ranked CSP rows: does ranking N candidates beat the template baseline? (issue "physics in the loop", item 3)

For every CSP target the model's N candidates (sampled once, with their log-probabilities) and the template's
candidates (element substitution into the task's training structures, :class:`TemplateBaseline`) are checked,
matched against the target (``StructureMatcher``, :func:`cifllm.evaluation.matching.csp_match_task`) and scored
with a universal potential on the DFT-anchored hull (single point). Rows, each answering with an ordered list:

=================  ======================================================================================================
``base``           the model's first ``k`` candidates in sample order (the unranked bench row)
``base+rank``      the model's N candidates ranked by E_hull (:mod:`cifllm.evaluation.ranking`: order, then dedupe)
``base+lik``       the same N ranked by the model's mean log-probability per token
``template``       the template's candidates in its own order (closest electronegativity mapping first)
``template+rank``  the template's candidates ranked by E_hull
``hybrid+rank``    model and template candidates pooled, ranked by E_hull
=================  ======================================================================================================

match@1 and match@k (k = 20) over targets with Wilson 95% intervals; ``ceiling``: share of targets where any
candidate of the row's pool matches (what a perfect ranker would reach); ``rank_accuracy``: among targets whose pool
holds a match, the share where the ranker puts one first. Seconds per composition: sampling (measured where the
candidates were sampled), checks, matching, and energies (measured here).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cifllm.bench.baselines import TemplateBaseline
from cifllm.bench.stats import rate
from cifllm.cif import CIFError, text_to_structure
from cifllm.evaluation.matching import csp_match_task
from cifllm.evaluation.ranking import RankSettings, dedupe_ranked, order, score_energy
from cifllm.evaluation.run import evaluate_texts

__all__ = ["RANKED_ROWS", "RankedTarget", "ranked_csp"]

RANKED_ROWS: tuple[str, ...] = ("base", "base+rank", "base+lik", "template", "template+rank", "hybrid+rank")


@dataclass(frozen=True)
class RankedTarget:
    """One CSP target: its canonical text, the prompt's cell formula and the model's candidates (continuations of
    ``data_<formula>``, full texts) with their mean log-probabilities per token (None: not measured)."""

    id: str
    text: str
    formula: str
    candidates: tuple[str, ...]
    mean_logprobs: tuple[float | None, ...]


def _rows_for(pool: list[dict[str, Any]], k: int) -> dict[str, list[int]]:
    """Ordered candidate indices of every row for one target's pool (records with source, valid, structure,
    e_above_hull, energy_per_atom, mean_logprob)."""
    model = [i for i, r in enumerate(pool) if r["source"] == "model"]
    tmpl = [i for i, r in enumerate(pool) if r["source"] == "template"]

    def ranked(idx: list[int], by: str) -> list[int]:
        recs = [{**pool[i], "valid": pool[i]["valid"]} for i in idx]
        o = [idx[j] for j in order(recs, by)]
        keep, _ = dedupe_ranked([pool[i]["structure"] if pool[i]["valid"] else None for i in range(len(pool))], o)
        return keep

    return {
        "base": model[:k],
        "base+rank": ranked(model, "energy"),
        "base+lik": ranked(model, "likelihood"),
        "template": tmpl,
        "template+rank": ranked(tmpl, "energy"),
        "hybrid+rank": ranked(model + tmpl, "energy"),
    }


def ranked_csp(
    targets: Sequence[RankedTarget], train_texts: Sequence[str], k: int = 20, n_template: int = 64, settings: RankSettings = RankSettings(by="energy"),
    time_limit_s: float = 30.0, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The ranked rows over ``targets`` (see the module docstring); template candidates from ``train_texts`` (up to
    ``n_template`` per target). Returns the metrics dict (``rows``: per row match@1, match@k, ceiling, rank accuracy
    with counts and intervals; ``per_target``; ``seconds``)."""
    t0 = time.perf_counter()
    anon = set()
    for t in targets:
        try:
            anon.add(text_to_structure(t.text).composition.anonymized_formula)
        except CIFError:
            continue
    train = []
    for x in train_texts:
        try:
            if text_to_structure(x).composition.anonymized_formula in anon:
                train.append(x)
        except CIFError:
            continue
    tb = TemplateBaseline(train)
    seconds = {"templates": 0.0, "checks": 0.0, "matching": 0.0, "energy": 0.0, "load": time.perf_counter() - t0}
    per_target: list[dict[str, Any]] = []
    hits: dict[str, dict[str, int]] = {r: {"at1": 0, "atk": 0, "ceiling": 0, "first_of_ceiling": 0} for r in RANKED_ROWS}
    for ti, t in enumerate(targets):
        a = time.perf_counter()
        tmpl = tb.csp(text_to_structure(t.text).composition, k=n_template)
        seconds["templates"] += time.perf_counter() - a
        texts = list(t.candidates) + tmpl
        sources = ["model"] * len(t.candidates) + ["template"] * len(tmpl)
        a = time.perf_counter()
        verd = evaluate_texts(texts, workers=0, time_limit_s=time_limit_s, uniqueness=False) if texts else []
        seconds["checks"] += time.perf_counter() - a
        a = time.perf_counter()
        rms = csp_match_task((t.text, [x if v["valid"] else None for x, v in zip(texts, verd, strict=True)]))
        seconds["matching"] += time.perf_counter() - a
        pool = []
        for i, (x, v, src) in enumerate(zip(texts, verd, sources, strict=True)):
            s = None
            if v["valid"]:
                try:
                    s = text_to_structure(x)
                except CIFError:
                    s = None
            pool.append({"source": src, "valid": s is not None, "structure": s, "match": rms[i] is not None,
                         "mean_logprob": t.mean_logprobs[i] if src == "model" else None, "e_above_hull": None, "energy_per_atom": None})
        a = time.perf_counter()
        scored = [i for i, r in enumerate(pool) if r["valid"]]
        for i, rec in zip(scored, score_energy([pool[i]["structure"] for i in scored], settings), strict=True):
            pool[i]["e_above_hull"], pool[i]["energy_per_atom"] = rec.get("e_above_hull"), rec.get("energy_per_atom")
        seconds["energy"] += time.perf_counter() - a
        rows = _rows_for(pool, k)
        rec_t: dict[str, Any] = {"id": t.id, "formula": t.formula, "n_model": len(t.candidates), "n_template": len(tmpl),
                                  "n_valid": len(scored), "rows": {}}
        for name, idx in rows.items():
            src_pool = [i for i, r in enumerate(pool) if (name.startswith("base") and r["source"] == "model") or (name.startswith("template") and r["source"] == "template") or name.startswith("hybrid")]
            m = [pool[i]["match"] for i in idx]
            ceiling = any(pool[i]["match"] for i in src_pool)
            at1, atk = bool(m[:1] and m[0]), any(m[:k])
            h = hits[name]
            h["at1"] += at1
            h["atk"] += atk
            h["ceiling"] += ceiling
            h["first_of_ceiling"] += at1 and ceiling
            best = pool[idx[0]] if idx else None
            rec_t["rows"][name] = {"match@1": at1, f"match@{k}": atk, "ceiling": ceiling,
                                   "top_e_above_hull": best["e_above_hull"] if best else None}
        per_target.append(rec_t)
        if (ti + 1) % 10 == 0 or ti + 1 == len(targets):
            log(f"ranked CSP: {ti + 1}/{len(targets)} targets, {time.perf_counter() - t0:.0f} s")
    n = len(targets)
    out_rows = {}
    for name, h in hits.items():
        out_rows[name] = {
            "match@1": rate(h["at1"], n), f"match@{k}": rate(h["atk"], n), "ceiling": rate(h["ceiling"], n),
            "rank_accuracy": rate(h["first_of_ceiling"], h["ceiling"]),
        }
    return {
        "n_targets": n, "k": k, "n_template_max": n_template, "potential": settings.potential, "rows": out_rows,
        "seconds": {x: round(v, 2) for x, v in seconds.items()},
        "seconds_per_target": {x: round(v / max(1, n), 3) for x, v in seconds.items()},
        "per_target": per_target,
    }
