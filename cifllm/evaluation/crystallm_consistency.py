"""CrystaLLM's validity of a generated CIF, reproduced: the ``consistent`` ("self-consistency (CrystaLLM)") metric.

The reference is lantunes/CrystaLLM ``crystallm/_metrics.py`` (``is_sensible``, ``is_valid``: formula,
multiplicity, bond-length and space-group consistency) as its ``bin/evaluate_cifs.py`` applies them: a sample is
valid when it is sensible, and then, after the symmetry operators were written into it, every sub-check passes;
any exception counts as invalid. Sub-checks (each a :class:`CheckResult` named ``crystallm_<name>``):

=======================  ====================================================================================
crystallm_sensible       cell lengths in [0.5, 1000] Angstrom and angles in [10, 170] degrees (``is_sensible``);
                         when it fails the structure sub-checks are skipped (CrystaLLM stops there)
crystallm_formula        ``data_`` formula, ``_chemical_formula_sum`` (= the ``data_`` formula, see
                         :mod:`cifllm.cif.crystallm`) and ``_chemical_formula_structural`` have the same pymatgen
                         ``reduced_formula`` string; the ``data_`` formula must be letters and digits only
                         (CrystaLLM's ``extract_data_formula``: a fractional formula such as ``Na0.5Cl`` fails).
                         Z is not checked
crystallm_multiplicity   per element, the sum of the *stated* multiplicities of its rows equals its count in
                         ``_chemical_formula_sum`` exactly; occupancies are ignored
crystallm_space_group    the stated H-M symbol equals ``SpacegroupAnalyzer(structure, symprec=0.1)``'s symbol
                         (angle tolerance 5 degrees), the structure read by pymatgen from the CIF with operators
crystallm_bond_length    ``bond_length_reasonableness_score`` >= 1.0: for every site, its CrystalNN neighbours
                         other than its own images, the minimum-image distance over the expected length (average
                         cationic + anionic radius when the Pauling electronegativities differ by >= 1.7, else
                         the atomic radii; an element without electronegativity uses atomic radii); a bond passes
                         at 0.68 < ratio < 1.32, a bond to H at ratio < 2.5; score = passing / all bonds
=======================  ====================================================================================

As in CrystaLLM, and unlike the project's stricter ``bond_length`` check
(:func:`cifllm.evaluation.checks.check_bond_lengths`), a disordered site, a bond whose expected length is zero or
unknown (a missing radius) and a structure without bonds other than self-images all fail
(``crystallm_disordered``, ``crystallm_bad_radius``, ``crystallm_no_bonds``: exceptions in CrystaLLM's code).

Two differences, both about running the metric safely, not about its verdict on an ordinary sample:

* the score is computed on one site per symmetry orbit (spglib at ``ORBIT_SYMPREC`` Angstrom), weighted by the orbit
  size - equivalent sites have the same neighbours, so it is CrystaLLM's all-site score at a fraction of the
  CrystalNN cost;
* resource gates before pymatgen and CrystalNN: rows that generate more than ``max_sites`` sites, a near-flat cell (volume / abc
  < ``min_cell_flatness``) or less than ``min_volume_per_site`` Angstrom^3 per site fail with reason
  ``crystallm_resource_gate`` (CrystalNN runs for minutes there; CrystaLLM's evaluation counts a sample whose check
  times out as invalid).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cifllm.cif import CanonicalCIF, CIFError, parse_canonical
from cifllm.cif.crystallm import crystallm_cif, generated_site_count
from cifllm.evaluation.bond_gates import bond_search_gate
from cifllm.evaluation.results import CheckResult

__all__ = [
    "ANGLE_RANGE",
    "BOND_CUTOFF",
    "BOND_H_FACTOR",
    "BOND_TOLERANCE",
    "CRYSTALLM_CHECKS",
    "LENGTH_RANGE",
    "SYMPREC",
    "CrystaLLMVerdict",
    "bond_length_reasonableness",
    "check_crystallm",
    "check_formula",
    "check_multiplicity",
    "check_sensible",
    "crystallm_is_valid",
]

#: CrystaLLM's constants (``is_sensible``, ``bond_length_reasonableness_score``, ``is_valid``,
#: ``is_space_group_consistent``): cell lengths (Angstrom) and angles (degrees), bond-ratio tolerance, ratio below which
#: a bond to H passes, minimum score, SpacegroupAnalyzer symprec (Angstrom).
LENGTH_RANGE = (0.5, 1000.0)
ANGLE_RANGE = (10.0, 170.0)
BOND_TOLERANCE = 0.32
BOND_H_FACTOR = 2.5
BOND_CUTOFF = 1.0
SYMPREC = 0.1
#: Angstrom; spglib tolerance for the symmetry orbits the bond score is computed on (one site each). Tight, so only
#: sites the stated operators map onto each other (to the text's 4 decimals) share an orbit.
ORBIT_SYMPREC = 1e-3
#: most symmetry-unique sites the bond analysis runs on (the strict check's ``max_bond_sites``; CrystalNN ~15 ms each)
MAX_BOND_SITES = 200
CRYSTALLM_CHECKS = ("crystallm_sensible", "crystallm_formula", "crystallm_multiplicity", "crystallm_space_group", "crystallm_bond_length")
_DATA_FORMULA = re.compile(r"[A-Za-z0-9]+")


def _fail(name: str, reason: str, detail: str = "", value: float | None = None) -> CheckResult:
    return CheckResult(name, False, reason, detail[:300], value)


def _pass(name: str, value: float | None = None, detail: str = "") -> CheckResult:
    return CheckResult(name, True, "", detail[:300], value)


def check_sensible(parsed: CanonicalCIF) -> CheckResult:
    """Cell lengths within :data:`LENGTH_RANGE` and angles within :data:`ANGLE_RANGE` (bounds included)."""
    lo, hi = LENGTH_RANGE
    if any(not lo <= x <= hi for x in parsed.abc):
        return _fail("crystallm_sensible", "crystallm_not_sensible", f"lengths {parsed.abc} outside [{lo}, {hi}] A")
    lo, hi = ANGLE_RANGE
    if any(not lo <= x <= hi for x in parsed.angles):
        return _fail("crystallm_sensible", "crystallm_not_sensible", f"angles {parsed.angles} outside [{lo}, {hi}] deg")
    return _pass("crystallm_sensible")


def _composition(formula: str) -> Any:
    from pymatgen.core import Composition

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Composition(formula)


def check_formula(parsed: CanonicalCIF) -> CheckResult:
    """``is_formula_consistent``: the three formulas have the same ``reduced_formula`` (module table)."""
    name = "crystallm_formula"
    if not _DATA_FORMULA.fullmatch(parsed.formula):
        return _fail(name, "crystallm_bad_data_formula", f"data_{parsed.formula[:80]}: not letters and digits only")
    try:
        data, structural = _composition(parsed.formula).reduced_formula, _composition(parsed.reduced_formula).reduced_formula
    except Exception as exc:
        return _fail(name, "crystallm_bad_data_formula", f"{type(exc).__name__}: {exc}")
    if data != structural:
        return _fail(name, "crystallm_formula_mismatch", f"data_{parsed.formula} reduces to {data}, _chemical_formula_structural {parsed.reduced_formula} to {structural}")
    return _pass(name)


def check_multiplicity(parsed: CanonicalCIF) -> CheckResult:
    """``is_atom_site_multiplicity_consistent``: stated multiplicities per element == the formula's counts, exactly."""
    name = "crystallm_multiplicity"
    try:
        expected = dict(_composition(parsed.formula).as_dict())
    except Exception as exc:
        return _fail(name, "crystallm_bad_data_formula", f"{type(exc).__name__}: {exc}")
    actual: dict[str, int] = {}
    for row in parsed.sites:
        actual[row.symbol] = actual.get(row.symbol, 0) + int(row.multiplicity)
    if expected != actual:
        return _fail(name, "crystallm_multiplicity_mismatch", f"formula {expected}, stated multiplicities {actual}")
    return _pass(name)


def _expected_length(el1: Any, el2: Any) -> float:
    """CrystaLLM's expected bond length (Angstrom) between two pymatgen Elements; raises where CrystaLLM's code does
    (a missing atomic radius: TypeError)."""
    x1, x2 = el1.X, el2.X
    if abs(x1 - x2) >= 1.7:  # NaN (no electronegativity): False, atomic radii
        if x1 < x2:
            return float(el1.average_cationic_radius) + float(el2.average_anionic_radius)
        return float(el1.average_anionic_radius) + float(el2.average_cationic_radius)
    return float(el1.atomic_radius + el2.atomic_radius)


def bond_length_reasonableness(structure: Any, equivalent_atoms: Any = None) -> CheckResult:
    """CrystaLLM's ``bond_length_reasonableness_score`` of an ordered ``structure`` (module table); passes at
    >= :data:`BOND_CUTOFF`. ``equivalent_atoms`` (spglib's, one orbit label per site) restricts CrystalNN to one site
    per orbit, weighted by the orbit size."""
    from pymatgen.analysis.local_env import CrystalNN

    name = "crystallm_bond_length"
    if not structure.is_ordered:
        return _fail(name, "crystallm_disordered", "a site has partial occupancy or mixed species (CrystaLLM's site.specie raises)")
    n = len(structure)
    if equivalent_atoms is None:
        reps, weights = list(range(n)), [1] * n
    else:
        uniq, counts = np.unique(np.asarray(equivalent_atoms), return_counts=True)
        reps, weights = [int(u) for u in uniq], [int(c) for c in counts]
    cnn = CrystalNN()
    lo, hi = 1 - BOND_TOLERANCE, 1 + BOND_TOLERANCE
    good = total = 0
    worst = (1.0, "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, w in zip(reps, weights, strict=True):
            site = structure[i]
            for nn in cnn.get_nn_info(structure, i):
                if nn["site_index"] == i:  # CrystaLLM skips the site's own images
                    continue
                other = nn["site"]
                length = float(site.distance(other))  # minimum-image distance, as CrystaLLM measures it
                try:
                    exp = _expected_length(site.specie, other.specie)
                except TypeError:
                    return _fail(name, "crystallm_bad_radius", f"{site.specie}-{other.specie}: no atomic radius in pymatgen")
                if exp == 0:
                    return _fail(name, "crystallm_bad_radius", f"{site.specie}-{other.specie}: expected bond length 0")
                ratio = length / exp
                ok = ratio < BOND_H_FACTOR if "H" in (site.specie.symbol, other.specie.symbol) else lo < ratio < hi
                total += w
                good += w * ok
                if not ok and abs(ratio - 1) > abs(worst[0] - 1):
                    worst = (ratio, f"{site.specie}-{other.specie} {length:.3f} A vs expected {exp:.3f} A (ratio {ratio:.2f})")
    if total == 0:
        return _fail(name, "crystallm_no_bonds", "CrystalNN finds no bond other than a site's own images (CrystaLLM divides by zero)")
    score = good / total
    if score < BOND_CUTOFF:
        return _fail(name, "crystallm_bond_length_unreasonable", f"score {score:.3f}; worst {worst[1]}", score)
    return _pass(name, score)


@dataclass
class CrystaLLMVerdict:
    """CrystaLLM's validity of one text: the sub-checks (:data:`CRYSTALLM_CHECKS`), ``valid`` when all pass, and the
    first failing sub-check's reason ("" when valid)."""

    checks: dict[str, CheckResult] = field(default_factory=dict)
    valid: bool = False
    reason: str = ""


def _skipped(names: tuple[str, ...], because: str) -> dict[str, CheckResult]:
    return {n: CheckResult(n, None, f"skipped_{because}") for n in names}


def _cell_volume(parsed: CanonicalCIF) -> float:
    a, b, c = parsed.abc
    ca, cb, cg = (math.cos(math.radians(x)) for x in parsed.angles)
    v2 = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
    return a * b * c * math.sqrt(v2) if v2 > 0 else 0.0


def _structure_checks(parsed: CanonicalCIF, max_sites: int, min_cell_flatness: float, min_volume_per_site: float) -> dict[str, CheckResult]:
    """Space-group and bond-length sub-checks on the structure pymatgen reads from :func:`crystallm_cif`."""
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sg, bond = "crystallm_space_group", "crystallm_bond_length"
    try:
        n_sites = generated_site_count(parsed, max_sites) if len(parsed.sites) <= max_sites else max_sites + 1
    except Exception as exc:  # no such space group: CrystaLLM's operator lookup raises too
        return {n: _fail(n, "crystallm_structure_failed", f"{type(exc).__name__}: {exc}") for n in (sg, bond)}
    if n_sites > max_sites:
        return {n: _fail(n, "crystallm_resource_gate", f"the rows generate more than {max_sites} sites") for n in (sg, bond)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(crystallm_cif(parsed), fmt="cif")
    except Exception as exc:
        return {n: _fail(n, "crystallm_structure_failed", f"pymatgen: {type(exc).__name__}: {exc}") for n in (sg, bond)}
    if len(structure) > max_sites:
        return {n: _fail(n, "crystallm_resource_gate", f"{len(structure)} sites > {max_sites}") for n in (sg, bond)}
    out: dict[str, CheckResult] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detected = SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_symbol()
        out[sg] = _pass(sg) if parsed.sg_symbol.strip() == detected.strip() else _fail(sg, "crystallm_space_group_mismatch", f"stated {parsed.sg_symbol}, detected {detected}")
    except Exception as exc:
        out[sg] = _fail(sg, "crystallm_symmetry_failed", f"{type(exc).__name__}: {exc}")
    v = _cell_volume(parsed)
    flat = v / (parsed.abc[0] * parsed.abc[1] * parsed.abc[2])
    if not flat >= min_cell_flatness or not v / max(len(structure), 1) >= min_volume_per_site:
        out[bond] = _fail(bond, "crystallm_resource_gate", f"volume / abc {flat:.4f}, {v / max(len(structure), 1):.4g} A^3 per site")
        return out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            equivalent = SpacegroupAnalyzer(structure, symprec=ORBIT_SYMPREC).get_symmetry_dataset().equivalent_atoms
    except Exception:
        equivalent = None  # every site on its own: the plain all-site score
    gate = bond_search_gate(structure, len(set(equivalent.tolist())) if equivalent is not None else len(structure), MAX_BOND_SITES)
    if gate is not None:  # the same bounds as the strict bond check (CrystalNN would run for minutes or gigabytes)
        out[bond] = _fail(bond, "crystallm_resource_gate", f"{gate[0]}: {gate[1]}")
        return out
    try:
        out[bond] = bond_length_reasonableness(structure, equivalent)
    except Exception as exc:  # CrystalNN/Voronoi on a strange cell: CrystaLLM counts the exception as invalid
        out[bond] = _fail(bond, "crystallm_bond_analysis_failed", f"{type(exc).__name__}: {exc}")
    return out


def check_crystallm(
    parsed: CanonicalCIF, max_sites: int = 1000, min_cell_flatness: float = 0.1, min_volume_per_site: float = 1.0
) -> CrystaLLMVerdict:
    """CrystaLLM's validity of a parsed canonical text (module docstring); the three limits are the resource gates."""
    v = CrystaLLMVerdict()
    v.checks["crystallm_sensible"] = check_sensible(parsed)
    v.checks["crystallm_formula"] = check_formula(parsed)
    v.checks["crystallm_multiplicity"] = check_multiplicity(parsed)
    if v.checks["crystallm_sensible"].ok:
        v.checks.update(_structure_checks(parsed, max_sites, min_cell_flatness, min_volume_per_site))
    else:
        v.checks.update(_skipped(("crystallm_space_group", "crystallm_bond_length"), "crystallm_sensible"))
    v.checks = {n: v.checks[n] for n in CRYSTALLM_CHECKS}
    v.valid = all(c.ok for c in v.checks.values())
    v.reason = next((c.reason for c in v.checks.values() if c.ok is not True), "")
    return v


def crystallm_is_valid(text: str, max_sites: int = 1000) -> CrystaLLMVerdict:
    """CrystaLLM's validity of one canonical text; a text whose fields do not parse fails every sub-check with the
    parse reason (CrystaLLM's regexes and pymatgen raise there)."""
    try:
        parsed = parse_canonical(text)
    except CIFError as exc:
        checks = {n: CheckResult(n, False, f"crystallm_{exc.reason}", exc.detail[:300]) for n in CRYSTALLM_CHECKS}
        return CrystaLLMVerdict(checks, False, f"crystallm_{exc.reason}")
    return check_crystallm(parsed, max_sites=max_sites)
