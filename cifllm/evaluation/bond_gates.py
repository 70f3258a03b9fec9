"""Bounds on CrystalNN bond analysis, shared by the strict bond check (:mod:`cifllm.evaluation.checks`) and the
CrystaLLM reproduction (:mod:`cifllm.evaluation.crystallm_consistency`): a cell that would make CrystalNN's Voronoi
search run away in time or memory is refused before CrystalNN runs, with a named reason.

CrystalNN's Voronoi search widens its sphere (7, 14, 28, ... Angstrom) up to the cell's longest diagonal until the
site is enclosed. A cell whose diagonal sphere holds more atoms than :data:`MAX_BOND_SEARCH_ATOMS` (n / V x 4/3 pi d^3:
~22 n for a cube, far more for an elongated cell such as 999 x 5.7 x 5.7 Angstrom, which ran > 5 minutes and
gigabytes) is not analysed; real cells stay well below (at most 13,194 in MP-20, 32,710 in MPTS-52, 2,079 in
Carbon-24, 108 in Perov-5, 700 each). Nor is a cell with more than :data:`MAX_BOND_VOLUME_PER_SITE` Angstrom^3 per site
(solids have 5-50; around an atom in such vacuum the search widens to the cell size: a 640 x 640 x 4.3 Angstrom LiOH
cell took 25 s).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["MAX_BOND_SEARCH_ATOMS", "MAX_BOND_VOLUME_PER_SITE", "bond_search_gate", "voronoi_reach"]

MAX_BOND_SEARCH_ATOMS = 100_000
MAX_BOND_VOLUME_PER_SITE = 500.0


def voronoi_reach(structure: Any) -> float:
    """Atoms (periodic images included, estimated from the density) within the longest cell diagonal of any site."""
    m = structure.lattice.matrix
    d = max(float(np.linalg.norm(np.asarray(c) @ m)) for c in ([1, 1, 1], [-1, 1, 1], [1, -1, 1], [1, 1, -1]))
    return len(structure) / float(structure.volume) * 4.0 / 3.0 * math.pi * d**3


def bond_search_gate(structure: Any, n_unique: int | None = None, max_sites: int | None = None) -> tuple[str, str] | None:
    """``(reason, detail)`` when CrystalNN should not analyse ``structure``: more than ``max_sites`` symmetry-unique
    sites (``n_unique``; ``too_many_sites_for_bond_check``), more than :data:`MAX_BOND_VOLUME_PER_SITE` Angstrom^3 per
    site (``cell_too_sparse_for_bond_check``) or a Voronoi reach above :data:`MAX_BOND_SEARCH_ATOMS`
    (``bond_search_too_large``); None when the analysis is bounded."""
    if max_sites is not None and n_unique is not None and n_unique > max_sites:
        return "too_many_sites_for_bond_check", f"{n_unique} symmetry-unique sites > {max_sites}: bonds not analysed"
    vps = float(structure.volume) / max(1, len(structure))
    if vps > MAX_BOND_VOLUME_PER_SITE:
        return "cell_too_sparse_for_bond_check", f"{vps:.4g} A^3 per site > {MAX_BOND_VOLUME_PER_SITE}: bonds not analysed"
    reach = voronoi_reach(structure)
    if reach > MAX_BOND_SEARCH_ATOMS:
        return "bond_search_too_large", f"~{reach:.3g} atoms within the cell diagonal > {MAX_BOND_SEARCH_ATOMS} (an elongated or sparse cell): bonds not analysed"
    return None
