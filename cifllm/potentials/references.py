"""Elemental reference energies of a potential: its energy per atom of each element's ground state, the mu_i of a
formation energy E_f = E - sum_i x_i mu_i (:func:`cifllm.potentials.hull.formation_energy_per_atom`).

Computed once per potential (:func:`compute_elemental_references`, run by ``data_prep/elemental_references.py``) and
shipped in ``cifllm/resources/potentials/elemental_references.json`` under the potential's
:attr:`~cifllm.potentials.base.Potential.weights_key`, with its provenance (package version, relaxation settings,
the structure behind every element).

Which structure. For each element, the single-element row of the DFT data (:func:`cifllm.potentials.dft.dft_rows`)
with the lowest DFT E_hull (ties: fewest atoms) - MP's ground state where the data has it - relaxed with the
potential; mu = relaxed energy per atom - that row's DFT E_hull, so a reference structure slightly above MP's ground
state still estimates the ground state's energy. An element absent from the data falls back to ASE's reference
state (``ase.build.bulk``; a dimer at ASE's bond length in a 12 A box for the diatomic gases and Cl/Br/I), or a
structure built here (trigonal Se, alpha-U, bct Pa, hcp Pm for dhcp, bcc Np standing in for alpha-Np), relaxed the
same way (``dft_e_above_hull`` null). An element for which neither exists, or whose relaxation fails, has no reference:
formation energies containing it are refused (``no_elemental_reference``).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cifllm.cif.io import read_cif_text
from cifllm.core.errors import CifllmError
from cifllm.potentials.base import Potential
from cifllm.potentials.dft import DftRow
from cifllm.potentials.relax import RelaxSettings
from cifllm.utils import atomic_write_json
from cifllm.utils.resources import resources_root

__all__ = [
    "REFERENCES_FILE",
    "ElementalReferences",
    "MissingReferencesError",
    "ReferenceCandidate",
    "ase_reference_structure",
    "compute_elemental_references",
    "elemental_candidates",
    "load_elemental_references",
    "write_elemental_references",
]

#: the shipped reference energies (all potentials, keyed by weights key)
REFERENCES_FILE = resources_root() / "potentials" / "elemental_references.json"
SCHEMA = 1


class MissingReferencesError(CifllmError, ValueError):
    """No shipped elemental references for this potential's weights."""


@dataclass(frozen=True)
class ReferenceCandidate:
    """The structure behind one element's reference: a pymatgen ``Structure``, where it came from (``source``:
    ``<dataset>:<material id>`` or ``ase:<state>``) and its DFT E_hull (eV/atom, None for an ASE state)."""

    element: str
    structure: Any
    source: str
    dft_e_above_hull: float | None


@dataclass
class ElementalReferences:
    """mu_i per element (``energies``, eV/atom) of one potential, with per-element provenance (``elements``) and the
    run's (``meta``: potential key, package version, relaxation settings, date, script)."""

    weights_key: str
    energies: dict[str, float]
    elements: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def elemental_candidates(rows: Iterable[DftRow]) -> dict[str, ReferenceCandidate]:
    """Per element, the single-element DFT row with the lowest E_hull (ties: fewest atoms), parsed."""
    best: dict[str, tuple[float, float, DftRow]] = {}
    for r in rows:
        if len(r.composition) != 1 or r.e_above_hull is None:
            continue
        el = r.composition[0][0]
        k = (r.e_above_hull, r.n_atoms)
        if el not in best or k < best[el][:2]:
            best[el] = (*k, r)
    out = {}
    for el, (eh, _, r) in sorted(best.items()):
        out[el] = ReferenceCandidate(el, read_cif_text(r.cif, r.id), r.id, eh)
    return out


#: bond lengths (A) of the halogen dimers ASE lists as molecular crystals it cannot build
_HALOGEN_D = {"Cl": 1.99, "Br": 2.28, "I": 2.67}


def ase_reference_structure(symbol: str, box_A: float = 12.0) -> tuple[Any, str] | None:
    """ASE's reference state of an element as a pymatgen ``Structure`` and a label, or None (no state, or a lattice
    ``ase.build.bulk`` cannot build): a dimer at ASE's bond length centred in a ``box_A`` cube for diatomic gases and
    the halogens (Cl, Br, I: their molecular crystals are dimers held by dispersion, which the potentials lack);
    trigonal Se built here."""
    from ase import Atoms
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    if symbol == "Se":  # trigonal Se (P3_121, 3a), which ase.build.bulk cannot build
        return Structure.from_spacegroup(152, Lattice.hexagonal(4.366, 4.954), ["Se"], [[0.2254, 0.0, 1 / 3]]), "trigonal Se (P3_121, a 4.366 c 4.954 A)"
    if symbol == "U":  # alpha-U (Cmcm, 4c); ase.build.bulk's one-atom orthorhombic cell is not it
        return Structure.from_spacegroup(63, Lattice.orthorhombic(2.854, 5.869, 4.955), ["U"], [[0.0, 0.1025, 0.25]]), "alpha-U (Cmcm, a 2.854 b 5.869 c 4.955 A)"
    if symbol == "Pa":  # body-centred tetragonal Pa (I4/mmm), its ground state
        return Structure.from_spacegroup(139, Lattice.tetragonal(3.925, 3.238), ["Pa"], [[0.0, 0.0, 0.0]]), "bct Pa (I4/mmm, a 3.925 c 3.238 A)"
    if symbol == "Pm":  # hcp stand-in for double-hcp Pm (as ASE does for Nd and Pr; the stacking costs meV/atom)
        return Structure.from_spacegroup(194, Lattice.hexagonal(3.65, 5.88), ["Pm"], [[1 / 3, 2 / 3, 0.25]]), "hcp Pm (a 3.65 c 5.88 A; dhcp ground state)"
    if symbol == "Np":  # bcc gamma-Np stand-in: the 8-atom alpha-Np ground state is not built here (approximate)
        return Structure.from_spacegroup(229, Lattice.cubic(3.52), ["Np"], [[0.0, 0.0, 0.0]]), "bcc Np (gamma, a 3.52 A; alpha-Np is the ground state: approximate)"
    state = reference_states[atomic_numbers[symbol]]
    if not state and symbol not in _HALOGEN_D:
        return None
    sym = "diatom" if symbol in _HALOGEN_D else state.get("symmetry")
    if sym == "diatom":
        d = _HALOGEN_D.get(symbol) or state["d"]
        atoms = Atoms(symbol * 2, positions=[[box_A / 2 - d / 2, box_A / 2, box_A / 2], [box_A / 2 + d / 2, box_A / 2, box_A / 2]], cell=[box_A] * 3, pbc=True)
        return AseAtomsAdaptor.get_structure(atoms), f"ase:diatom(d={d})"
    if sym == "orthorhombic":  # ase.build.bulk writes a one-atom cell with ASE's lattice constants: not the phase
        return None
    try:
        atoms = bulk(symbol)
    except Exception:
        return None
    return AseAtomsAdaptor.get_structure(atoms), f"ase:bulk({sym})"


def compute_elemental_references(
    potential: Potential,
    candidates: Mapping[str, ReferenceCandidate],
    settings: RelaxSettings = RelaxSettings(),
    elements: Iterable[str] | None = None,
    max_dft_e_above_hull: float = 0.05,
    max_volume_change: float = 1.7,
    progress: Callable[[str, dict[str, Any]], Any] | None = None,
) -> ElementalReferences:
    """Relax each element's reference structure with ``potential`` and return mu_i = relaxed energy per atom - the
    structure's DFT E_hull. The structure: the DFT candidate when its E_hull <= ``max_dft_e_above_hull`` (eV/atom),
    else ASE's state (:func:`ase_reference_structure`), else the DFT candidate however high (its record is flagged
    ``approximate``: the potential's polymorph energy difference replaces DFT's). ``elements``: which (default:
    every element the potential covers). An element without a structure, whose relaxation is not ``ok``, or whose
    ASE-built structure changed volume by more than ``max_volume_change`` either way (the built lattice was not the
    potential's phase: ``volume_change``) gets no energy (its record says why)."""
    from pymatgen.core.periodic_table import Element

    els = sorted(elements or potential.elements, key=lambda e: Element(e).Z)
    energies: dict[str, float] = {}
    info: dict[str, dict[str, Any]] = {}
    for el in els:
        data = candidates.get(el)
        cand = data if data is not None and (data.dft_e_above_hull or 0.0) <= max_dft_e_above_hull else None
        if cand is None:
            got = ase_reference_structure(el)
            cand = ReferenceCandidate(el, got[0], got[1], None) if got else data
        if cand is None:
            info[el] = {"energy_per_atom": None, "reason": "no_structure", "source": None}
            if progress:
                progress(el, info[el])
            continue
        r = potential.relax(cand.structure, settings)
        shift = cand.dft_e_above_hull or 0.0
        rec = {
            "energy_per_atom": round(float(r["energy_per_atom"]) - shift, 6) if r.get("ok") else None,
            "relaxed_energy_per_atom": r.get("energy_per_atom"),
            "source": cand.source,
            "dft_e_above_hull": cand.dft_e_above_hull,
            "approximate": (cand.dft_e_above_hull or 0.0) > max_dft_e_above_hull,
            "n_atoms": r.get("n_atoms"),
            "steps": r.get("steps"),
            "converged": r.get("converged"),
            "fmax_final": r.get("fmax_final"),
            "volume_ratio": r.get("volume_ratio"),
            "reason": r.get("reason"),
            "time_s": r.get("time_s"),
        }
        ratio = r.get("volume_ratio") or 1.0
        if cand.dft_e_above_hull is None and rec["energy_per_atom"] is not None and not (1 / max_volume_change <= ratio <= max_volume_change):
            rec.update(energy_per_atom=None, reason="volume_change")
        if rec["energy_per_atom"] is not None:
            energies[el] = rec["energy_per_atom"]
        info[el] = rec
        if progress:
            progress(el, rec)
    meta = {
        "potential": potential.name,
        "model": potential.model,
        "potential_key": potential.key,
        "package_version": potential.version,
        "energy_scale": potential.energy_scale,
        "relax_settings": asdict(settings),
        "date": _dt.date.today().isoformat(),
    }
    return ElementalReferences(potential.weights_key, energies, info, meta)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"schema": SCHEMA, "references": {}}
    data = json.loads(path.read_text())
    if data.get("schema") != SCHEMA:
        raise MissingReferencesError(f"{path}: schema {data.get('schema')!r}, expected {SCHEMA}")
    return data


def load_elemental_references(potential: Potential, path: str | Path = REFERENCES_FILE) -> ElementalReferences:
    """The shipped references of ``potential`` (by its weights key); :class:`MissingReferencesError` when absent."""
    data = _read(Path(path))
    ref = data["references"].get(potential.weights_key)
    if ref is None:
        have = sorted(data["references"])
        raise MissingReferencesError(f"{path}: no elemental references for {potential.weights_key} (have {have}); compute them with data_prep/elemental_references.py")
    return ElementalReferences(potential.weights_key, {k: float(v) for k, v in ref["energies"].items()}, ref.get("elements", {}), ref.get("meta", {}))


def write_elemental_references(refs: ElementalReferences, path: str | Path = REFERENCES_FILE, about: str = "", merge: bool = False) -> None:
    """Add or replace one potential's references in the JSON file (atomic write; other potentials kept). ``merge``:
    update only the elements of ``refs`` in the stored entry (their provenance says when each was computed)."""
    p = Path(path)
    data = _read(p)
    if about:
        data["about"] = about
    energies, elements = dict(refs.energies), dict(refs.elements)
    old = data["references"].get(refs.weights_key)
    meta = refs.meta
    if merge and old:
        for el in refs.elements:
            old["energies"].pop(el, None)
        energies = {**old["energies"], **energies}
        elements = {**old["elements"], **{el: {**rec, "updated": refs.meta.get("date")} for el, rec in elements.items()}}
        meta = old["meta"]
    data["references"][refs.weights_key] = {"energies": dict(sorted(energies.items())), "meta": meta, "elements": elements}
    data["references"] = dict(sorted(data["references"].items()))
    atomic_write_json(p, data)
