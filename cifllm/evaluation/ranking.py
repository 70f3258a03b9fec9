"""Ranking candidate structures for a composition: drop duplicates, score, order, keep the best.

The steps (each a function, used by :func:`cifllm.api.generate` and the benchmark's ranked rows):

1. **Spread** (:func:`space_group_plan`, optional): the ``K`` space groups the model finds most likely for the
   composition, among those whose Wyckoff multiplicities can realize it (:func:`realizable_space_groups`, at some Z
   with at most ``max_atoms`` atoms). Likelihood = the model's log-probability of the whole prompt
   ``data_<cell formula>`` + the two space-group lines (teacher-forced, so Z and the group are scored jointly). The
   candidates are split evenly over the ``K`` groups (the constraint engine forces each group's lines).
2. **Score** every valid candidate. Energy (:func:`score_energy`): with a universal potential
   (:mod:`cifllm.potentials`, CHGNet by default) the energy per atom (eV/atom) of the candidate as written (one
   batched single point: ~40 ms a structure on 2 cores), its formation energy on the MP2020 scale from the
   potential's elemental references, and its E_hull (eV/atom) on a DFT hull
   (:func:`cifllm.potentials.hull_table.load_default_hull` unless one is given). Likelihood needs no potential:
   the engine's mean log-probability per generated token (nats; ``Generation.logprob / tokens``), or, for a pool
   with template candidates, every candidate's teacher-forced mean log-probability under the model.
3. **Order** (:func:`order`): by E_hull (lower first; a candidate without one - no energy, unsupported element -
   after every candidate with one, then by energy per atom), or by mean log-probability (higher first). Invalid
   candidates come last in either order.
4. **Deduplicate** (:func:`dedupe_ranked`): pymatgen ``StructureMatcher`` (the ``dedup`` tolerances of
   :func:`cifllm.cif.matching.make_matcher`, volume-scaled) inside buckets of equal reduced formula, in rank order:
   the best-scoring copy represents its group and counts its copies (``n_copies``: how often the generators wrote
   it - a signal of its own, reported).
5. **Relax** (``relax``, :func:`relax_and_score`): the best ``relax_top`` distinct candidates (default 2n) are relaxed
   (ASE FIRE, cell + positions, ``fmax`` eV/A, at most ``max_steps`` steps; 10-90 s each for a generated structure on
   2 cores), re-scored on their relaxed energy and re-ordered ahead of the rest; the relaxed structure replaces the
   candidate.

What E_hull is here: the potential's formation energy placed on a hull of DFT formation energies (Materials Project,
MP2020-corrected) - not a DFT E_hull. The potential's own error (CHGNet: tens of meV/atom) and the hull's
incompleteness (only the phases of MP-20 and MPTS-52) both move it; ``benchmarks/bench_hull.py`` measures both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pymatgen.core import Composition

from cifllm.cif.io import read_cif_text
from cifllm.cif.matching import fit_reduced, make_matcher, reduce_for_matching
from cifllm.evaluation.nll import load_scoring_model, token_nll
from cifllm.potentials import RelaxSettings, get_potential
from cifllm.potentials.hull import DftHull, HullScorer
from cifllm.potentials.hull_table import load_default_hull
from cifllm.sampling.constraints import realizable
from cifllm.sampling.prompts import build_prompt, parse_composition

__all__ = ["RANK_BY", "RankBy", "RankSettings", "dedupe", "dedupe_ranked", "feasible_space_groups", "order", "relax_and_score", "score_energy", "space_group_plan"]

RankBy = Literal["none", "likelihood", "energy"]
RANK_BY: tuple[str, ...] = ("none", "likelihood", "energy")


@dataclass(frozen=True)
class RankSettings:
    """How :func:`cifllm.api.generate` ranks. ``by``: ``none`` (sample order), ``likelihood`` or ``energy``;
    ``candidates``: how many are drawn before ranking (None: 64 when ranking, else ``n``); ``space_groups``: spread the
    candidates over the K most likely feasible space groups (0: the model chooses freely); ``relax``: relax the best
    ``relax_top`` (None: 2n) by single point, re-rank them on their relaxed energy and return relaxed structures;
    ``potential``: ``chgnet`` or ``sevennet``; ``fmax`` (eV/A) and ``max_steps`` bound each relaxation;
    ``dedupe``: drop StructureMatcher duplicates before scoring."""

    by: RankBy = "none"
    candidates: int | None = None
    space_groups: int = 0
    relax: bool = False
    relax_top: int | None = None
    potential: str = "chgnet"
    fmax: float = 0.1
    max_steps: int = 300
    dedupe: bool = True

    def __post_init__(self) -> None:
        if self.by not in RANK_BY:
            raise ValueError(f"rank must be one of {', '.join(RANK_BY)}, got {self.by!r}")
        if self.candidates is not None and self.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")
        if self.space_groups < 0:
            raise ValueError(f"space_groups must be >= 0, got {self.space_groups}")
        if self.relax and self.by != "energy":
            raise ValueError("relax needs rank=energy (relaxation re-ranks on the relaxed energy)")

    def n_candidates(self, n: int) -> int:
        """Candidates to draw for ``n`` answers: ``candidates`` or, when ranking, max(64, n) (unranked: n); never
        fewer than n."""
        if self.candidates is not None:
            return max(self.candidates, n)
        return max(64, n) if self.by != "none" else n


def feasible_space_groups(composition: str | Composition, max_atoms: int = 60) -> dict[int, int]:
    """Space group -> smallest Z (formula units of ``composition``'s reduced formula) whose element counts its Wyckoff
    multiplicities can realize with at most ``max_atoms`` atoms in the conventional cell."""
    comp = parse_composition(composition).reduced_composition
    base = [int(round(comp[el])) for el in comp.elements]
    out: dict[int, int] = {}
    for sg in range(1, 231):
        for z in range(1, max_atoms // max(1, sum(base)) + 1):
            if realizable(sg, [c * z for c in base]):
                out[sg] = z
                break
    return out


def space_group_plan(
    model_dir: str | Path, composition: str | Composition, k: int, n: int, adapter: str | Path | None = None, max_atoms: int = 60, batch_size: int = 64,
) -> list[dict[str, Any]]:
    """The ``k`` most likely feasible space groups of ``composition`` under the model (see the module docstring) and
    how many of ``n`` candidates each gets (even split, the remainder to the likelier groups). One record per group:
    ``space_group``, ``z``, ``prompt`` (text), ``logprob`` (nats, whole prompt), ``count``. Empty when no group is
    feasible within ``max_atoms``."""
    feasible = feasible_space_groups(composition, max_atoms)
    if not feasible or k < 1:
        return []
    reduced = parse_composition(composition).reduced_composition
    prompts = {sg: build_prompt(composition=reduced, z=z, space_group=sg) for sg, z in feasible.items()}
    model, tok = load_scoring_model(model_dir, adapter)
    sgs = sorted(prompts)
    enc = tok.backend_tokenizer.encode_batch([prompts[sg].text for sg in sgs], add_special_tokens=False)
    seqs = [[tok.bos_token_id, *e.ids] for e in enc]
    nll = token_nll(model, tok, seqs, [1] * len(seqs), batch_size)
    ranked = sorted(zip(sgs, nll, strict=True), key=lambda t: (t[1][0], t[0]))[: min(k, len(sgs))]
    per, extra = divmod(n, len(ranked))
    return [
        {"space_group": sg, "z": feasible[sg], "prompt": prompts[sg].text, "logprob": -total, "count": per + (1 if i < extra else 0)}
        for i, (sg, (total, _)) in enumerate(ranked)
    ]


def dedupe(structures: Sequence[Any | None]) -> list[int]:
    """For every item, the index of the first structure it duplicates (itself when new; None items map to
    themselves and match nothing). StructureMatcher ``dedup`` tolerances, compared within equal reduced formulas."""
    sm = make_matcher("dedup")
    leaders: dict[str, list[tuple[int, Any]]] = {}
    out: list[int] = []
    for i, s in enumerate(structures):
        if s is None:
            out.append(i)
            continue
        key = s.composition.reduced_formula
        red = reduce_for_matching(sm, s)
        for j, other in leaders.get(key, []):
            if fit_reduced(sm, red, other):
                out.append(j)
                break
        else:
            leaders.setdefault(key, []).append((i, red))
            out.append(i)
    return out


def _scorer(settings: RankSettings, hull: DftHull | None) -> HullScorer:
    return HullScorer(get_potential(settings.potential), hull if hull is not None else load_default_hull())


def score_energy(structures: Sequence[Any], settings: RankSettings = RankSettings(by="energy"), hull: DftHull | None = None) -> list[dict[str, Any]]:
    """Energy records (:meth:`cifllm.potentials.hull.HullScorer.score` keys: ``energy_per_atom``,
    ``formation_energy_per_atom``, ``e_above_hull``, ``stable``, ``metastable``, ``reason``, ...) of every structure
    as given: one batched single point with ``settings.potential`` on ``hull`` (None: the default DFT hull)."""
    recs = _scorer(settings, hull).score(list(structures)) if structures else []
    for r in recs:
        r["relaxed"] = False
    return recs


def relax_and_score(
    structures: Sequence[Any], settings: RankSettings = RankSettings(by="energy"), hull: DftHull | None = None, log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Like :func:`score_energy` after relaxing each structure (``settings.fmax`` eV/A, ``settings.max_steps``);
    ``relaxed: True`` and ``structure``: the relaxed pymatgen structure when the relaxation produced one; a
    relaxation that did not converge keeps its energy and gets no E_hull."""
    scorer = _scorer(settings, hull)
    rs = RelaxSettings(fmax=settings.fmax, max_steps=settings.max_steps)
    out = []
    for i, s in enumerate(structures):
        if log:
            log(f"relaxing candidate {i + 1}/{len(structures)} ({s.composition.formula}, {len(s)} atoms)")
        rec = scorer.score([s], relax=True, settings=rs)[0]
        rec["relaxed"] = True
        if rec.get("relaxed_cif"):
            rec["structure"] = read_cif_text(rec["relaxed_cif"], where=f"relaxed candidate {i + 1}")
        out.append(rec)
    return out


def dedupe_ranked(structures: Sequence[Any | None], ranked: Sequence[int]) -> tuple[list[int], dict[int, int]]:
    """Distinct structures in rank order: ``ranked`` (indices, best first) with every StructureMatcher duplicate of a
    better-ranked structure removed, and how many candidates each kept one stands for (itself included). So the
    best-scoring copy represents a group (a strained copy of a good structure does not)."""
    order_structs = [structures[i] for i in ranked]
    leaders = dedupe(order_structs)
    copies: dict[int, int] = {}
    for lead in leaders:
        copies[ranked[lead]] = copies.get(ranked[lead], 0) + 1
    return [ranked[j] for j, lead in enumerate(leaders) if lead == j], copies


def _key_energy(r: dict[str, Any]) -> tuple:
    eh, e = r.get("e_above_hull"), r.get("energy_per_atom")
    return (
        not r.get("valid", True),
        eh is None or not math.isfinite(eh),
        eh if eh is not None else math.inf,
        e if e is not None else math.inf,
    )


def _key_likelihood(r: dict[str, Any]) -> tuple:
    lp = r.get("mean_logprob")
    return (not r.get("valid", True), lp is None, -(lp if lp is not None else -math.inf))


def order(records: Sequence[dict[str, Any]], by: str) -> list[int]:
    """Indices of ``records`` best first (stable: ties keep their order). ``energy``: invalid last, then lowest
    ``e_above_hull`` (None after every value), then lowest ``energy_per_atom``; ``likelihood``: invalid last, then
    highest ``mean_logprob`` (None last); ``none``: as given."""
    idx = list(range(len(records)))
    if by == "none":
        return idx
    key = {"energy": _key_energy, "likelihood": _key_likelihood}[by]
    return sorted(idx, key=lambda i: key(records[i]))
