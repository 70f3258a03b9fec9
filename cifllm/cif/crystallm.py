"""Canonical text as the CIF CrystaLLM's evaluation reads (pure; spglib's operator tables).

CrystaLLM (Antunes et al. 2024, lantunes/CrystaLLM) checks a generated CIF after its post-processing has written the
space group's symmetry operators into it, and reads it with pymatgen (``Structure.from_str(cif, fmt="cif")``). A
canonical text has no operators and no ``_chemical_formula_sum``; :func:`crystallm_cif` writes both:

* the operators are those of the setting the text is written in (:func:`cifllm.cif.canonical.hall_number` of its
  space-group number and text format), i.e. the ones :func:`~cifllm.cif.canonical.text_to_structure` applies.
  CrystaLLM regenerates them from the H-M symbol with pymatgen's ``SpaceGroup``, which matches the setting its own
  training CIFs were written in; for a cif-v2 text (ITA standard setting: origin choice 2, hexagonal axes) the text's
  own setting is the one its coordinates mean.
* ``_chemical_formula_sum`` is the ``data_`` formula (the cell content), as in CrystaLLM's CIFs, whose ``data_``
  formula is made from ``_chemical_formula_sum``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import spglib
from pymatgen.core import Composition
from pymatgen.core.operations import SymmOp

from cifllm.cif.canonical import CanonicalCIF, hall_number

__all__ = ["crystallm_cif", "generated_site_count", "symmetry_operators_xyz"]

#: fractional-coordinate tolerance under which two symmetry images are one site (pymatgen CifParser's site_tolerance)
SITE_TOLERANCE = 1e-4


@lru_cache(maxsize=512)
def symmetry_operators_xyz(number: int, text_format: str) -> tuple[str, ...]:
    """The symmetry operators (``'x, y, z'`` form, fractional) of space group ``number`` in the setting
    ``text_format`` writes it in; identity first."""
    sym = spglib.get_symmetry_from_database(hall_number(number, text_format))
    ops = []
    for rot, trans in zip(sym["rotations"], sym["translations"], strict=True):
        t = np.mod(np.round(np.asarray(trans, dtype=float), 6), 1.0)
        ops.append(SymmOp.from_rotation_and_translation(np.asarray(rot, dtype=float), t).as_xyz_str())
    return tuple(ops)


def generated_site_count(parsed: CanonicalCIF, limit: int) -> int:
    """How many sites the text's operators generate from its rows (images closer than :data:`SITE_TOLERANCE` in
    every fractional coordinate are one site); stops counting once past ``limit``. Cheap (numpy): the gate before a
    CIF reader expands a text whose rows sit on general positions of a large group."""
    sym = spglib.get_symmetry_from_database(hall_number(parsed.sg_number, parsed.text_format))
    rots, trans = np.asarray(sym["rotations"], dtype=float), np.asarray(sym["translations"], dtype=float)
    total = 0
    for row in parsed.sites:
        imgs = np.mod(rots @ np.asarray(row.frac, dtype=float) + trans, 1.0)
        keys = np.mod(np.round(imgs / SITE_TOLERANCE).astype(np.int64), round(1 / SITE_TOLERANCE))
        total += len(np.unique(keys, axis=0))
        if total > limit:
            break
    return total


def _sum_formula(formula: str) -> str:
    """``Na4Cl4`` -> ``'Na4 Cl4'`` (the CIF ``_chemical_formula_sum`` form); the text as written when pymatgen cannot
    read it (the formula check then fails on it, as CrystaLLM's does)."""
    try:
        comp = Composition(formula)
    except (ValueError, KeyError):
        return formula
    return " ".join(f"{el.symbol}{amt:g}" for el, amt in comp.items())


def crystallm_cif(parsed: CanonicalCIF) -> str:
    """A full CIF of a parsed canonical text: the same header and atom sites (the Wyckoff column dropped), plus
    ``_chemical_formula_sum`` and the symmetry-operator loop (module docstring)."""
    ops = symmetry_operators_xyz(parsed.sg_number, parsed.text_format)
    lines = [
        f"data_{parsed.formula}",
        f"_symmetry_space_group_name_H-M {parsed.sg_symbol}",
        *(f"_cell_length_{k} {v!r}" for k, v in zip("abc", parsed.abc, strict=True)),
        *(f"_cell_angle_{k} {v!r}" for k, v in zip(("alpha", "beta", "gamma"), parsed.angles, strict=True)),
        f"_symmetry_Int_Tables_number {parsed.sg_number}",
        f"_chemical_formula_structural {parsed.reduced_formula}",
        f"_chemical_formula_sum '{_sum_formula(parsed.formula)}'",
        f"_cell_volume {parsed.volume!r}",
        f"_cell_formula_units_Z {parsed.z}",
        "loop_",
        "_symmetry_equiv_pos_site_id",
        "_symmetry_equiv_pos_as_xyz",
        *(f"{i} '{op}'" for i, op in enumerate(ops, 1)),
        "loop_",
        "_atom_site_type_symbol",
        "_atom_site_label",
        "_atom_site_symmetry_multiplicity",
        "_atom_site_fract_x",
        "_atom_site_fract_y",
        "_atom_site_fract_z",
        "_atom_site_occupancy",
        *(f"{r.symbol} {r.label} {r.multiplicity} {r.frac[0]!r} {r.frac[1]!r} {r.frac[2]!r} {r.occupancy!r}" for r in parsed.sites),
    ]
    return "\n".join(lines) + "\n"
