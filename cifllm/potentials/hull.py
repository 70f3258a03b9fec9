"""The DFT-anchored convex hull: competing phases with DFT (Materials Project) formation energies, every element at
zero formation energy, and a candidate placed on it by its formation energy.

Competing phases. :class:`DftHull` holds entries (composition, DFT formation energy per atom in eV/atom) from the
data rows that carry one (:func:`cifllm.potentials.dft.dft_rows`: MP-20 and MPTS-52; or a corpus). Every element is
added at 0 eV/atom, so a hull exists for any composition (there is no "missing elemental reference"); an element
that the data never shows in a compound just has no competing phase.

Candidate. :meth:`DftHull.e_above_hull` takes a formation energy per atom; for a structure scored by a potential,
:func:`formation_energy_per_atom` makes it from the potential's energy per atom and the potential's own elemental
reference energies (:mod:`cifllm.potentials.references`), on the MP2020-corrected scale
(:meth:`~cifllm.potentials.base.Potential.mp_compatible`). pymatgen ``PhaseDiagram`` of the entries of every
sub-system of the candidate's elements gives E_hull (eV/atom, ``allow_negative``: below the known hull is negative)
and the decomposition. One phase diagram per chemical system is built once and reused.

What it is not: DFT's E_hull. The candidate's energy is the potential's (its error is tens of meV/atom), and the hull
is as complete as the data (the shared MP-20/MPTS-52 rows are a fraction of MP): a missing competing phase lowers a
candidate's E_hull, never raises it. ``benchmarks/bench_hull.py`` measures both effects against MP's E_hull.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifllm.potentials.base import Potential
from cifllm.potentials.dft import DftRow, dft_rows, dft_rows_from_corpus
from cifllm.potentials.references import ElementalReferences, load_elemental_references
from cifllm.potentials.relax import RelaxSettings

__all__ = ["DftHull", "HullEntry", "HullScorer", "formation_energy_per_atom"]


@dataclass(frozen=True)
class HullEntry:
    """A competing phase: ``id``, composition (element -> amount) and DFT formation energy per atom (eV/atom)."""

    id: str
    composition: tuple[tuple[str, float], ...]
    formation_energy_per_atom: float


def _chemsys(elements: Iterable[str]) -> str:
    return "-".join(sorted(set(elements)))


def formation_energy_per_atom(composition: Mapping[str, float], energy_per_atom: float, references: Mapping[str, float]) -> float:
    """E_f = E - sum_i x_i mu_i (eV/atom): ``energy_per_atom`` of a cell with ``composition`` (element -> amount)
    minus the atom-fraction-weighted elemental reference energies ``references`` (element -> eV/atom). Raises
    ``KeyError`` naming the elements without a reference."""
    missing = sorted(el for el in composition if el not in references)
    if missing:
        raise KeyError(f"no elemental reference energy for {','.join(missing)}")
    n = sum(composition.values())
    return energy_per_atom - sum(a / n * references[el] for el, a in composition.items())


class DftHull:
    """Convex hull of DFT formation energies (see module docstring). ``entries``: competing phases; elements are
    implicit at 0 eV/atom."""

    def __init__(self, entries: Sequence[HullEntry], source: str = "") -> None:
        self.entries = list(entries)
        self.source = source
        self.by_system: dict[str, list[HullEntry]] = {}
        for e in self.entries:
            self.by_system.setdefault(_chemsys(el for el, _ in e.composition), []).append(e)
        self._pd: dict[str, Any] = {}

    @classmethod
    def from_rows(cls, rows: Iterable[DftRow], exclude: Iterable[str] = (), source: str = "") -> DftHull:
        """Entries from every row with a formation energy, minus rows whose ``id`` or ``material_id`` is in
        ``exclude`` (held-out structures)."""
        ex = set(exclude)
        keep = [HullEntry(r.id, r.composition, float(r.formation_energy_per_atom)) for r in rows if r.formation_energy_per_atom is not None and r.id not in ex and r.material_id not in ex]
        return cls(keep, source)

    @classmethod
    def from_registry(cls, data_dir: str | Path | None = None, exclude: Iterable[str] = ()) -> DftHull:
        """From the registry's DFT rows (MP-20, MPTS-52) under ``data_dir`` (None: ``$CIFLLM_DATA_DIR``)."""
        return cls.from_rows(dft_rows(data_dir), exclude, source=f"registry:{data_dir or '$CIFLLM_DATA_DIR'}")

    @classmethod
    def from_corpus(cls, corpus_dir: str | Path, split: str | None = None, exclude: Iterable[str] = ()) -> DftHull:
        """From the corpus rows whose properties hold ``formation_energy_per_atom``."""
        return cls.from_rows(dft_rows_from_corpus(corpus_dir, split), exclude, source=f"corpus:{corpus_dir}")

    def subsystems(self, elements: Iterable[str]) -> list[str]:
        """Chemical systems of the entries that are non-empty subsets of ``elements``."""
        els = sorted(set(elements))
        return [k for r in range(1, len(els) + 1) for c in itertools.combinations(els, r) if (k := "-".join(c)) in self.by_system]

    def phase_diagram(self, elements: Iterable[str]) -> Any:
        """The pymatgen ``PhaseDiagram`` of ``elements`` (entries of every sub-system plus the elements at 0),
        built once per chemical system."""
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
        from pymatgen.core import Composition

        key = _chemsys(elements)
        if key not in self._pd:
            els = key.split("-")
            pd_entries = [PDEntry(Composition({el: 1}), 0.0, name=el) for el in els]
            for sysname in self.subsystems(els):
                for e in self.by_system[sysname]:
                    comp = Composition(dict(e.composition))
                    pd_entries.append(PDEntry(comp, e.formation_energy_per_atom * comp.num_atoms, name=e.id))
            self._pd[key] = PhaseDiagram(pd_entries)
        return self._pd[key]

    def e_above_hull(self, composition: Mapping[str, float], formation_energy_per_atom: float) -> dict[str, Any]:
        """E_hull (eV/atom, negative below the hull) of a composition (element -> amount) with this formation energy
        per atom; also the decomposition (reduced formulas of the hull phases it sits over) and the number of
        competing phases in its chemical system (``hull_n_entries``, elements excluded)."""
        from pymatgen.analysis.phase_diagram import PDEntry
        from pymatgen.core import Composition

        comp = Composition(dict(composition))
        els = [el.symbol for el in comp.elements]
        pd = self.phase_diagram(els)
        decomp, e_hull = pd.get_decomp_and_e_above_hull(PDEntry(comp, formation_energy_per_atom * comp.num_atoms), allow_negative=True)
        return {
            "e_above_hull": float(e_hull),
            "hull_decomposition": sorted(d.composition.reduced_formula for d in decomp),
            "hull_n_entries": sum(len(self.by_system[s]) for s in self.subsystems(els)),
        }


class HullScorer:
    """Per-structure stability verdicts with one potential on a DFT hull: energy per atom (potential), formation
    energy per atom (potential, MP2020 scale, the potential's elemental references) and E_hull (eV/atom).

    ``references`` defaults to the shipped ones for this potential (:func:`load_elemental_references`).
    :meth:`score` single-points the structures as given (batched) or relaxes each first (``relax=True``)."""

    def __init__(self, potential: Potential, hull: DftHull, references: ElementalReferences | None = None, stable_threshold: float = 0.0, metastable_threshold: float = 0.1) -> None:
        self.potential = potential
        self.hull = hull
        self.references = references or load_elemental_references(potential)
        self.stable_threshold = stable_threshold
        self.metastable_threshold = metastable_threshold

    def place(self, structure: Any, energy_per_atom: float) -> dict[str, Any]:
        """Formation energy and E_hull of one structure with this potential energy per atom (eV/atom, raw model
        output); ``hull_reason`` ``no_elemental_reference`` only for an element without a shipped reference."""
        comp = {el.symbol: float(a) for el, a in structure.composition.element_composition.items()}
        try:
            e = self.potential.mp_compatible(structure, energy_per_atom)
            ef = formation_energy_per_atom(comp, e, self.references.energies)
        except (KeyError, ValueError) as exc:
            return {"formation_energy_per_atom": None, "e_above_hull": None, "stable": None, "metastable": None, "hull_reason": "no_elemental_reference" if isinstance(exc, KeyError) else "no_mp2020_correction", "hull_detail": str(exc)}
        h = self.hull.e_above_hull(comp, ef)
        return {
            "formation_energy_per_atom": round(ef, 6),
            **{**h, "e_above_hull": round(h["e_above_hull"], 6)},
            "stable": h["e_above_hull"] <= self.stable_threshold,
            "metastable": h["e_above_hull"] <= self.metastable_threshold,
            "hull_reason": None,
            "hull_detail": "",
        }

    def score(self, structures: Sequence[Any], relax: bool = False, settings: RelaxSettings = RelaxSettings()) -> list[dict[str, Any]]:
        """One record per pymatgen structure: ``energy_per_atom`` (eV/atom), ``reason`` (why no energy), and the
        keys of :meth:`place`; with ``relax`` the relaxation record's keys too (E_hull of the relaxed structure; a
        relaxation that did not converge keeps its energy and gets no E_hull)."""
        out: list[dict[str, Any]] = []
        if relax:
            for s in structures:
                r = self.potential.relax(s, settings)
                rec = {**r}
                if r.get("ok"):
                    rec.update(self.place(s, float(r["energy_per_atom"])))
                else:
                    rec.update(formation_energy_per_atom=None, e_above_hull=None, stable=None, metastable=None, hull_reason=None, hull_detail="")
                out.append(rec)
            return out
        for s, sp in zip(structures, self.potential.single_point_records(structures), strict=True):
            rec = {"energy_per_atom": sp.energy_per_atom, "reason": sp.reason, "detail": sp.detail}
            if sp.energy_per_atom is None:
                rec.update(formation_energy_per_atom=None, e_above_hull=None, stable=None, metastable=None, hull_reason=None, hull_detail="")
            else:
                rec.update(self.place(s, sp.energy_per_atom))
            out.append(rec)
        return out
