"""CrystaLLM's expected bond length between two elements (pure; pymatgen's element data).

Shared by the bond-length check (:func:`cifllm.evaluation.checks.check_bond_lengths`: a bond passes within
``1 +- 0.32`` of it) and the constraint engine's geometry guard (:mod:`cifllm.sampling.constraints`: no pair of atoms
closer than ``min_bond_ratio`` of it), so that the guard keeps exactly the rule the check applies.
"""

from __future__ import annotations

import warnings
from functools import cache

from pymatgen.core import Element

__all__ = ["expected_bond_length"]


@cache
def expected_bond_length(sym1: str, sym2: str) -> float | None:
    """Expected bond length (Angstrom) between elements ``sym1`` and ``sym2``: average cationic + average anionic
    radius if their Pauling electronegativities differ by >= 1.7, else the sum of their atomic radii; None if unknown
    (no such element, or a radius pymatgen lacks).

    One deviation from CrystaLLM: where pymatgen has no ionic radius for the pair (e.g. the auride anion in CsAu: its
    average anionic radius is 0), CrystaLLM's code adds a zero radius and rejects every such bond; here the atomic
    radii are used instead.
    """
    try:
        el1, el2 = Element(sym1), Element(sym2)
    except ValueError:
        return None
    with warnings.catch_warnings():  # noble gases: "No Pauling electronegativity" (NaN: the atomic radii are used)
        warnings.simplefilter("ignore")
        x1, x2 = el1.X, el2.X
    if x1 == x1 and x2 == x2 and abs(x1 - x2) >= 1.7:
        cat, an = (el1, el2) if x1 < x2 else (el2, el1)
        rc, ra = float(cat.average_cationic_radius), float(an.average_anionic_radius)
        if rc > 0 and ra > 0:
            return rc + ra
    r1, r2 = el1.atomic_radius, el2.atomic_radius
    if r1 is None or r2 is None:
        return None
    exp = float(r1) + float(r2)
    return exp if exp > 0 else None
