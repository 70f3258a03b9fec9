"""Structure-type (prototype) keys: anonymous formula + space group + sorted Wyckoff letters (spglib, ``symprec``)."""

from __future__ import annotations

import spglib

from cifllm.cif.canonical import CIFError, text_to_structure

__all__ = ["prototype_key", "prototype_key_from_text"]


def prototype_key(structure, symprec: float = 0.1) -> str:
    """e.g. ``ABC3_221_a.b.c`` for a cubic perovskite. Elements are anonymized by amount (pymatgen's anonymized
    formula); each symmetry orbit contributes its Wyckoff letter."""
    types = {}
    nums = [types.setdefault(site.species_string, len(types) + 1) for site in structure]
    ds = spglib.get_symmetry_dataset((structure.lattice.matrix, structure.frac_coords, nums), symprec=symprec)
    if ds is None:
        raise CIFError("symmetry_failed", f"spglib found no symmetry at symprec={symprec}")
    seen = set()
    letters = []
    for i, orbit in enumerate(ds.equivalent_atoms):
        if orbit not in seen:
            seen.add(orbit)
            letters.append(ds.wyckoffs[i])
    return f"{structure.composition.anonymized_formula}_{ds.number}_{'.'.join(sorted(letters))}"


def prototype_key_from_text(text: str, symprec: float = 0.1) -> str:
    """:func:`prototype_key` of a canonical CIF text."""
    return prototype_key(text_to_structure(text), symprec)
