"""Per-sample checks of generated canonical CIF text: each a pure function returning a :class:`CheckResult`.

Checks, in order (a later check is skipped, ``ok=None``, when an earlier one it depends on failed):

=================  ===========================================================================================
parse              canonical text -> ``Structure``, sites re-derived from the stated space group
cell               cell sanity: lengths 0.5-1000 Angstrom, angles 10-170 degrees, and (a gate before any
                   neighbour search) not near-flat - volume / (a b c) >= 0.1 - and >= 1 Angstrom^3 per site (the
                   densest known solids have ~5); a near-flat cell packs thousands of images into CrystalNN's
                   cutoff and ran it for minutes
volume             stated ``_cell_volume`` within 1% of the volume of the stated cell (informational)
formula            ``data_`` formula, ``_chemical_formula_structural`` and Z agree (CrystaLLM's formula rule + Z)
multiplicity       stated site multiplicities equal those the space group generates
sites_formula      sum of multiplicity x occupancy per element == ``data_`` formula within ``formula_atol``
                   (CrystaLLM's multiplicity rule, occupancy-weighted, on the generated sites)
space_group        stated space group == ``SpacegroupAnalyzer(symprec=0.1)`` of the parsed structure
bond_length        CrystaLLM's bond-length rule made stricter: CrystalNN bonds within +-32% of summed radii (ionic
                   radii when the electronegativity difference >= 1.7, atomic radii otherwise; bonds to H < 2.5x);
                   score = fraction of such bonds, passes at >= 1.0 (all bonds); a site without
                   CrystalNN neighbours is judged by its nearest neighbour (none within 24 Angstrom: a
                   failed bond); more than ``max_bond_sites`` (200) symmetry-unique sites are not
                   analysed: ``too_many_sites_for_bond_check`` (CrystalNN took 14-23 s on 1,000), nor an
                   elongated cell whose Voronoi search could reach > 100,000 atoms
                   (``bond_search_too_large``) or a cell of > 500 Angstrom^3 per site
                   (``cell_too_sparse_for_bond_check``)
structural         CDVAE/DiffCSP: every interatomic distance >= 0.5 Angstrom, volume >= 0.1 Angstrom^3; the
                   neighbour search's memory is bounded (:data:`MAX_NEIGHBOR_CUBES`) whatever the cell size
compositional      CDVAE/DiffCSP: ``smact.screening.smact_validity`` (charge neutrality + Pauling test,
                   single elements and all-metal alloys valid), SMACT 2014 oxidation states by default
crystallm_*        CrystaLLM's own validity, reproduced (:mod:`cifllm.evaluation.crystallm_consistency`):
                   sensible cell, formula, multiplicity, space-group and bond-length sub-checks
=================  ===========================================================================================

A check that raises (a bug, not bad input) fails with reason ``check_crashed`` and the exception in its detail, so
:func:`check_sample` never raises; timeouts (:class:`cifllm.utils.limits.ItemTimeout`) are not caught.

Aggregates: ``consistent`` (self-consistency as CrystaLLM defines it: every ``crystallm_*`` check passes, i.e. its
``is_sensible`` and ``is_valid``), ``consistent_strict`` (this project's stricter rule: formula, multiplicity,
sites_formula, space_group, bond_length), ``valid`` (CDVAE/DiffCSP validity: parse, cell, structural, compositional),
``valid_all`` (valid and consistent). The first failure (``reason``) is taken in the order validity, CrystaLLM,
strict; it is "" only when all three aggregates hold.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import reduce
from typing import Any

import numpy as np

from cifllm.cif import CanonicalCIF, CIFError, expand_sites, format_formula, parse_canonical, text_to_structure
from cifllm.cif.bonds import expected_bond_length
from cifllm.evaluation.bond_gates import MAX_BOND_SEARCH_ATOMS, MAX_BOND_VOLUME_PER_SITE, bond_search_gate
from cifllm.evaluation.crystallm_consistency import CRYSTALLM_CHECKS, check_crystallm
from cifllm.evaluation.results import CheckResult

__all__ = [
    "failure_summary",
    "CHECK_NAMES",
    "CONSISTENCY_CHECKS",
    "CRYSTALLM_CHECKS",
    "STRICT_CONSISTENCY_CHECKS",
    "VALIDITY_CHECKS",
    "CheckResult",
    "CheckSettings",
    "MAX_BOND_SEARCH_ATOMS",
    "MAX_BOND_VOLUME_PER_SITE",
    "MAX_NEIGHBOR_CUBES",
    "SampleVerdict",
    "check_bond_lengths",
    "check_cell",
    "check_compositional",
    "check_formula",
    "check_multiplicity",
    "check_parse",
    "check_sample",
    "check_sites_formula",
    "check_space_group",
    "check_structural",
    "check_volume",
    "text_density",
]

CHECK_NAMES = (
    "parse",
    "cell",
    "volume",
    "formula",
    "multiplicity",
    "sites_formula",
    "space_group",
    "bond_length",
    "structural",
    "compositional",
    *CRYSTALLM_CHECKS,
)
#: ``consistent``: CrystaLLM's validity (:mod:`cifllm.evaluation.crystallm_consistency`)
CONSISTENCY_CHECKS = CRYSTALLM_CHECKS
#: ``consistent_strict``: this project's stricter self-consistency
STRICT_CONSISTENCY_CHECKS = ("formula", "multiplicity", "sites_formula", "space_group", "bond_length")
VALIDITY_CHECKS = ("parse", "cell", "structural", "compositional")


@dataclass(frozen=True)
class CheckSettings:
    """Tolerances of the checks (defaults: CrystaLLM for consistency, CDVAE/DiffCSP for validity)."""

    symprec: float = 0.1  #: SpacegroupAnalyzer distance tolerance (Angstrom) of the space_group check
    angle_tolerance: float = 5.0  #: SpacegroupAnalyzer angle tolerance (degrees) of the space_group check
    min_length: float = 0.5  #: shortest cell length (Angstrom) the cell check accepts
    max_length: float = 1000.0  #: longest cell length (Angstrom) the cell check accepts
    min_angle: float = 10.0  #: smallest cell angle (degrees) the cell check accepts
    max_angle: float = 170.0  #: largest cell angle (degrees) the cell check accepts
    min_cell_flatness: float = 0.1  #: smallest volume / (a b c) the cell check accepts (a flat cell fails before any neighbour search)
    min_volume_per_site: float = 1.0  #: smallest cell volume per site (Angstrom^3) the cell check accepts, before any neighbour search
    volume_rtol: float = 0.01  #: relative tolerance of the stated _cell_volume vs the volume of the stated cell (volume check)
    formula_atol: float = 0.02  #: atoms per element by which the sum of multiplicity x occupancy may differ from the data_ formula (sites_formula check)
    bond_tolerance: float = 0.32  #: a bond passes when length / expected length lies within 1 +- this (CrystaLLM bond-length score)
    bond_h_factor: float = 2.5  #: a bond to H passes below this ratio of its expected length
    bond_cutoff: float = 1.0  #: smallest bond-length score (share of bonds that pass) for the bond_length check to pass
    max_bond_sites: int = 200  #: most symmetry-unique sites CrystalNN analyses (~15 ms each); more fail too_many_sites_for_bond_check
    min_distance: float = 0.5  #: smallest interatomic distance (Angstrom) the structural check accepts (CDVAE/DiffCSP)
    min_volume: float = 0.1  #: smallest cell volume (Angstrom^3) the structural check accepts
    smact_oxidation_states: str = "smact14"  #: smact oxidation-state set of the compositional check: smact14 (CDVAE's) or icsd24 (smact 4 default)
    max_sites: int = 1000  #: a parsed cell with more sites fails parse (too_many_sites)


def _fail(name: str, reason: str, detail: str = "", value: float | None = None) -> CheckResult:
    return CheckResult(name, False, reason, detail[:300], value)


def _pass(name: str, value: float | None = None, detail: str = "") -> CheckResult:
    return CheckResult(name, True, "", detail[:300], value)


def _skip(name: str, because: str) -> CheckResult:
    return CheckResult(name, None, f"skipped_{because}")


def check_parse(text: str, settings: CheckSettings = CheckSettings()) -> tuple[CheckResult, CanonicalCIF | None, Any]:
    """Parse canonical text (fields, then the structure re-derived from the space group). Never raises."""
    try:
        parsed = parse_canonical(text)
    except CIFError as exc:
        return _fail("parse", exc.reason, exc.detail), None, None
    except Exception as exc:
        return _fail("parse", "parse_crash", f"{type(exc).__name__}: {exc}"), None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = text_to_structure(text, max_sites=settings.max_sites)
    except CIFError as exc:
        return _fail("parse", exc.reason, exc.detail), parsed, None
    except Exception as exc:
        return _fail("parse", "parse_crash", f"{type(exc).__name__}: {exc}"), parsed, None
    return _pass("parse", float(len(structure))), parsed, structure


def check_cell(parsed: CanonicalCIF, settings: CheckSettings = CheckSettings(), n_sites: int | None = None) -> CheckResult:
    """Cell lengths within [min_length, max_length] Angstrom, angles within [min_angle, max_angle] degrees, the cell
    not near-flat (volume / abc >= ``min_cell_flatness``) and, given ``n_sites``, >= ``min_volume_per_site``
    Angstrom^3 per site. A failed cell skips the neighbour searches (space group, structural, bond length)."""
    bad_len = [x for x in parsed.abc if not settings.min_length <= x <= settings.max_length]
    if bad_len:
        return _fail("cell", "cell_length", f"lengths {parsed.abc} outside [{settings.min_length}, {settings.max_length}] A")
    bad_ang = [x for x in parsed.angles if not settings.min_angle <= x <= settings.max_angle]
    if bad_ang:
        return _fail("cell", "cell_angle", f"angles {parsed.angles} outside [{settings.min_angle}, {settings.max_angle}] deg")
    v = _cell_volume(parsed.abc, parsed.angles)
    flat = v / (parsed.abc[0] * parsed.abc[1] * parsed.abc[2])
    if not flat >= settings.min_cell_flatness:
        return _fail("cell", "flat_cell", f"angles {parsed.angles}: volume / abc = {flat:.4f} < {settings.min_cell_flatness}", flat)
    if n_sites and not v / n_sites >= settings.min_volume_per_site:
        return _fail("cell", "cell_too_dense", f"{v / n_sites:.4g} A^3 per site < {settings.min_volume_per_site}", v / n_sites)
    return _pass("cell")


def _cell_volume(abc: tuple[float, ...], angles: tuple[float, ...]) -> float:
    a, b, c = abc
    ca, cb, cg = (math.cos(math.radians(x)) for x in angles)
    v2 = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
    return a * b * c * math.sqrt(v2) if v2 > 0 else 0.0


def check_volume(parsed: CanonicalCIF, settings: CheckSettings = CheckSettings()) -> CheckResult:
    """Stated cell volume within ``volume_rtol`` (relative) of the volume of the stated lengths and angles."""
    v = _cell_volume(parsed.abc, parsed.angles)
    if v <= 0:
        return _fail("volume", "degenerate_cell", f"angles {parsed.angles} give no volume")
    rel = abs(parsed.volume - v) / v
    if rel > settings.volume_rtol:
        return _fail("volume", "volume_mismatch", f"stated {parsed.volume:.4f} vs cell {v:.4f} A^3", rel)
    return _pass("volume", rel)


def _composition(formula: str):
    from pymatgen.core import Composition

    comp = Composition(formula)
    if len(comp) == 0 or any(a <= 0 for a in comp.values()):
        raise ValueError(f"formula {formula!r} has no positive counts")
    return comp


def check_formula(parsed: CanonicalCIF, settings: CheckSettings = CheckSettings()) -> CheckResult:
    """``data_`` formula, ``_chemical_formula_structural`` (reduced) and Z agree (CrystaLLM formula consistency)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cell = _composition(parsed.formula)
            reduced = _composition(parsed.reduced_formula)
    except Exception as exc:
        return _fail("formula", "bad_formula", f"{type(exc).__name__}: {exc}")
    red, factor = cell.get_reduced_composition_and_factor()
    if not red.almost_equals(reduced, rtol=0.0, atol=settings.formula_atol):
        return _fail("formula", "reduced_formula_mismatch", f"data_{parsed.formula} reduces to {format_formula(red, True)}, text says {parsed.reduced_formula}")
    z = int(round(factor)) if abs(factor - round(factor)) < 1e-6 and round(factor) >= 1 else 1
    if z != parsed.z:
        return _fail("formula", "z_mismatch", f"data_{parsed.formula} has Z={z}, text says {parsed.z}")
    return _pass("formula")


def check_multiplicity(parsed: CanonicalCIF) -> CheckResult:
    """Stated multiplicity of every atom-site row equals what the stated space group generates from it."""
    try:
        _, _, _, generated = expand_sites(parsed)
    except CIFError as exc:
        return _fail("multiplicity", exc.reason, exc.detail)
    bad = [(r.label, r.multiplicity, g) for r, g in zip(parsed.sites, generated, strict=True) if r.multiplicity != g]
    if bad:
        return _fail("multiplicity", "multiplicity_mismatch", f"{len(bad)} row(s), e.g. {bad[0][0]}: stated {bad[0][1]}, generated {bad[0][2]}")
    return _pass("multiplicity")


def check_sites_formula(parsed: CanonicalCIF, structure: Any, settings: CheckSettings = CheckSettings()) -> CheckResult:
    """The atoms the sites generate (sum of multiplicity x occupancy per element) equal the ``data_`` formula."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stated = _composition(parsed.formula)
    except Exception as exc:
        return _fail("sites_formula", "bad_formula", f"{type(exc).__name__}: {exc}")
    actual = structure.composition.element_composition
    if not actual.almost_equals(stated, rtol=0.0, atol=settings.formula_atol):
        return _fail("sites_formula", "formula_sites_mismatch", f"data_{parsed.formula}, sites give {format_formula(actual)}")
    return _pass("sites_formula")


def _sga(structure: Any, settings: CheckSettings):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return SpacegroupAnalyzer(structure, symprec=settings.symprec, angle_tolerance=settings.angle_tolerance)


def check_space_group(parsed: CanonicalCIF, structure: Any, settings: CheckSettings = CheckSettings(), sga: Any = None) -> CheckResult:
    """Stated space-group number equals the one ``SpacegroupAnalyzer(symprec)`` finds in the parsed structure."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detected = int((sga or _sga(structure, settings)).get_space_group_number())
    except Exception as exc:
        return _fail("space_group", "symmetry_failed", f"{type(exc).__name__}: {exc}")
    if detected != parsed.sg_number:
        return _fail("space_group", "space_group_mismatch", f"stated {parsed.sg_number} ({parsed.sg_symbol}), detected {detected}", float(detected))
    return _pass("space_group", float(detected))


def _nearest(structure: Any, i: int) -> list[tuple[Any, float]]:
    """The nearest neighbour of site ``i`` (periodic images included) within 24 Angstrom as [(element, distance)], or
    [] (an isolated atom)."""
    for r in (6.0, 12.0, 24.0):
        nbrs = [n for n in structure.get_neighbors(structure[i], r) if n.nn_distance > 1e-8]
        if nbrs:
            n = min(nbrs, key=lambda x: x.nn_distance)
            return [(n.specie, float(n.nn_distance))]
    return []


def check_bond_lengths(structure: Any, settings: CheckSettings = CheckSettings(), equivalent_atoms: Any = None) -> CheckResult:
    """CrystaLLM bond-length reasonableness score (see module table); passes when score >= ``bond_cutoff``.

    Only one site per symmetry orbit (``equivalent_atoms``, from spglib) is analysed, weighted by the orbit size:
    symmetry-equivalent sites have the same bonds, so the score equals CrystaLLM's all-site score. Disordered sites
    count as their majority element; bonds whose expected length is unknown (no radius in pymatgen) are not counted.
    A site for which CrystalNN finds no neighbour (e.g. CsCl-type TlI, or atoms far apart) is judged by its nearest
    neighbour instead (CrystaLLM would divide by zero there and count the sample invalid); with no neighbour within
    24 Angstrom the site counts as one failed bond. More than ``settings.max_bond_sites`` symmetry-unique sites fail
    ``too_many_sites_for_bond_check`` before CrystalNN runs (value None: no score was measured), and so does a cell
    whose Voronoi search could grow past :data:`MAX_BOND_SEARCH_ATOMS` atoms (``bond_search_too_large``) or with more
    than :data:`MAX_BOND_VOLUME_PER_SITE` Angstrom^3 per site (``cell_too_sparse_for_bond_check``).
    """
    from pymatgen.analysis.local_env import CrystalNN

    s = structure
    if not s.is_ordered:
        s = structure.copy()
        vacant = []
        for i, site in enumerate(s):
            amounts = site.species.element_composition.items()
            if not amounts:  # occupancy below pymatgen's amount tolerance (1e-8): nothing sits there
                vacant.append(i)
                continue
            s.replace(i, max(amounts, key=lambda kv: kv[1])[0])
        if vacant:
            s.remove_sites(vacant)
            equivalent_atoms = None
        if len(s) == 0:
            return _fail("bond_length", "no_atoms", "every site has a vanishing occupancy")
    n = len(s)
    if equivalent_atoms is None:
        reps, weights = list(range(n)), [1] * n
    else:
        eq = np.asarray(equivalent_atoms)
        uniq, counts = np.unique(eq, return_counts=True)
        reps, weights = [int(u) for u in uniq], [int(c) for c in counts]
    gate = bond_search_gate(s, len(reps), settings.max_bond_sites)
    if gate is not None:
        return _fail("bond_length", *gate)
    cnn = CrystalNN()
    lo, hi = 1 - settings.bond_tolerance, 1 + settings.bond_tolerance
    good = total = 0.0
    worst = (1.0, "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, w in zip(reps, weights, strict=True):
                el_i = s[i].specie
                pairs = [(nn["site"].specie, float(np.linalg.norm(nn["site"].coords - s[i].coords))) for nn in cnn.get_nn_info(s, i)]
                if not pairs:
                    pairs = _nearest(s, i)
                if not pairs:  # an isolated atom: no bond at all is not a reasonable one
                    total += w
                    worst = (math.inf, f"{el_i.symbol} has no neighbour within 24 A")
                    continue
                for el_j, length in pairs:
                    if length <= 0:
                        continue
                    exp = expected_bond_length(el_i.symbol, el_j.symbol)
                    if exp is None:
                        continue
                    ratio = length / exp
                    ok = ratio < settings.bond_h_factor if "H" in (el_i.symbol, el_j.symbol) else lo < ratio < hi
                    total += w
                    good += w * ok
                    if not ok and abs(ratio - 1) > abs(worst[0] - 1):
                        worst = (ratio, f"{el_i.symbol}-{el_j.symbol} {length:.3f} A vs expected {exp:.3f} A (ratio {ratio:.2f})")
    except Exception as exc:  # CrystalNN/Voronoi on a strange cell
        return _fail("bond_length", "bond_analysis_failed", f"{type(exc).__name__}: {exc}")
    if total == 0:
        # no neighbour with known radii (e.g. only noble gases): nothing to judge
        return _pass("bond_length", None, "no bond with known radii")
    score = good / total
    if score < settings.bond_cutoff:
        return _fail("bond_length", "bond_length_unreasonable", f"score {score:.3f}; worst {worst[1]}", score)
    return _pass("bond_length", score)


#: Most cubes of pymatgen's cell-list neighbour search (``find_points_in_spheres``: 224 bytes a cube, the atoms' extent
#: + 2 r divided into cubes of side max(r, 1 Angstrom)), so ~45 MB. A 0.5 Angstrom search over a 400 Angstrom cell
#: needed 2.5 GB and a 999 Angstrom cell a MemoryError; a larger radius (fewer, larger cubes) keeps the bound.
MAX_NEIGHBOR_CUBES = 200_000


def _neighbor_search_radius(structure: Any, r_min: float) -> float:
    """The smallest search radius >= ``r_min`` (Angstrom) for which pymatgen's neighbour search uses at most
    :data:`MAX_NEIGHBOR_CUBES` cubes; pairs farther apart than ``r_min`` are discarded afterwards."""
    coords = np.asarray(structure.cart_coords, dtype=float)
    extent = coords.max(axis=0) - coords.min(axis=0) if len(coords) else np.zeros(3)

    def cubes(r: float) -> float:
        side = max(r, 1.0)  # pymatgen searches radii below 1 Angstrom with 1 Angstrom and filters
        return float(np.prod(np.ceil((extent + 2 * side + 1e-6) / side)))

    r = r_min
    while cubes(r) > MAX_NEIGHBOR_CUBES:
        r *= 1.25
    return r


def check_structural(structure: Any, settings: CheckSettings = CheckSettings()) -> CheckResult:
    """Every interatomic distance (periodic images included) >= ``min_distance`` Angstrom; volume >= ``min_volume``.
    The neighbour search's memory is bounded whatever the cell size (:func:`_neighbor_search_radius`)."""
    vol = float(structure.volume)
    if not vol >= settings.min_volume:
        return _fail("structural", "small_volume", f"volume {vol:.4g} A^3 < {settings.min_volume}", vol)
    r = _neighbor_search_radius(structure, settings.min_distance)
    centers, points, images, dists = structure.get_neighbor_list(r, exclude_self=False)
    near = dists < settings.min_distance
    centers, points, images, dists = centers[near], points[near], images[near], dists[near]
    mask = ~((centers == points) & np.all(images == 0, axis=1)) if len(centers) else np.zeros(0, bool)
    if mask.any():
        d = float(dists[mask].min())
        k = int(np.argmin(np.where(mask, dists, np.inf)))
        a, b = structure[int(centers[k])].species_string, structure[int(points[k])].species_string
        return _fail("structural", "atoms_too_close", f"{a}-{b} {d:.3f} A < {settings.min_distance} A", d)
    return _pass("structural")


def _integer_counts(comp: Any, max_total: int = 10_000) -> dict[str, int] | None:
    """Smallest whole-number ratio of the element amounts (relative to the largest, to 1/1000); None when there is
    none within ``max_total`` atoms or an element vanishes at that resolution."""
    raw = {el.symbol: float(a) for el, a in comp.element_composition.items()}
    top = max(raw.values(), default=0.0)
    if not top > 0:
        return None
    amounts = {k: Fraction(a / top).limit_denominator(1000) for k, a in raw.items()}
    if any(f <= 0 for f in amounts.values()):
        return None
    denom = reduce(math.lcm, (f.denominator for f in amounts.values()), 1)
    counts = {k: int(v * denom) for k, v in amounts.items()}
    g = reduce(math.gcd, counts.values())
    counts = {k: v // g for k, v in counts.items()}
    return counts if sum(counts.values()) <= max_total else None


def check_compositional(structure: Any, settings: CheckSettings = CheckSettings()) -> CheckResult:
    """SMACT validity of the structure's composition (CDVAE/DiffCSP definition, see module table)."""
    from pymatgen.core import Composition
    from smact.screening import smact_validity

    counts = _integer_counts(structure.composition)
    if counts is None:
        return _fail("compositional", "non_integer_composition", f"{structure.composition} has no small integer ratio")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ok = smact_validity(Composition(counts), use_pauling_test=True, include_alloys=True, oxidation_states_set=settings.smact_oxidation_states)
    except Exception as exc:
        return _fail("compositional", "smact_failed", f"{type(exc).__name__}: {exc}")
    if not ok:
        return _fail("compositional", "smact_invalid", f"{format_formula(Composition(counts), True)}: no charge-neutral, electronegativity-ordered oxidation states")
    return _pass("compositional")


def text_density(parsed: CanonicalCIF) -> float | None:
    """Density in g/cm^3 from the stated formula and volume (no structure needed); None when unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mass = float(_composition(parsed.formula).weight)  # g/mol of the cell content
        v = _cell_volume(parsed.abc, parsed.angles)
        return mass / v * 1.66053906660 if v > 0 else None  # amu/A^3 -> g/cm^3
    except Exception:
        return None


def _guard(name: str, fn: Any, *args: Any, **kwargs: Any) -> CheckResult:
    """Run one check; an exception (a bug in a check or a library, never bad input) fails it as ``check_crashed``."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        return _fail(name, "check_crashed", f"{type(exc).__name__}: {exc}")


@dataclass
class SampleVerdict:
    """All check results of one sample plus the aggregates and descriptors used by the report."""

    checks: dict[str, CheckResult] = field(default_factory=dict)
    consistent: bool = False  # CrystaLLM's validity (CONSISTENCY_CHECKS)
    consistent_strict: bool = False  # this project's stricter rule (STRICT_CONSISTENCY_CHECKS)
    valid: bool = False
    valid_all: bool = False
    reason: str = ""  # first failing check's reason ("" when valid_all and consistent_strict)
    reduced_formula: str | None = None  # of the parsed structure (format_formula, reduced)
    n_elements: int | None = None
    n_sites: int | None = None
    sg_stated: int | None = None
    sg_detected: int | None = None
    density: float | None = None  # g/cm^3 of the parsed structure
    time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = {k: {kk: vv for kk, vv in asdict(v).items() if kk != "name"} for k, v in self.checks.items()}
        return d


def _crystallm(parsed: CanonicalCIF, settings: CheckSettings) -> dict[str, CheckResult]:
    """CrystaLLM's sub-checks (:func:`~cifllm.evaluation.crystallm_consistency.check_crystallm`) behind this
    project's resource limits; a crash fails every sub-check as ``check_crashed``."""
    try:
        return check_crystallm(parsed, settings.max_sites, settings.min_cell_flatness, settings.min_volume_per_site).checks
    except Exception as exc:
        return {n: _fail(n, "check_crashed", f"{type(exc).__name__}: {exc}") for n in CRYSTALLM_CHECKS}


def check_sample(text: str, settings: CheckSettings = CheckSettings()) -> SampleVerdict:
    """Run every check on one generated text. Never raises; bounded only by the caller's time limit."""
    t0 = time.perf_counter()
    v = SampleVerdict()
    res, parsed, structure = check_parse(text, settings)
    v.checks["parse"] = res
    if parsed is not None:
        v.sg_stated = parsed.sg_number
    if structure is None:
        for name in CHECK_NAMES[1:]:
            v.checks[name] = _skip(name, "parse")
        if parsed is not None:  # CrystaLLM reads the fields and its own structure: no need of this parser's
            v.checks.update(_crystallm(parsed, settings))
            v.consistent = all(v.checks[c].ok for c in CONSISTENCY_CHECKS)
        v.reason = res.reason
        v.time_s = time.perf_counter() - t0
        return v
    assert parsed is not None
    comp = structure.composition
    v.n_sites = len(structure)
    try:
        v.n_elements = len(comp.elements)
        v.reduced_formula = format_formula(comp, reduced=True) if len(comp) else None
        v.density = float(structure.density) if len(comp) else None
    except Exception:  # descriptors only; the checks below give the verdict
        pass
    v.checks["cell"] = _guard("cell", check_cell, parsed, settings, len(structure))
    v.checks["volume"] = _guard("volume", check_volume, parsed, settings)
    v.checks["formula"] = _guard("formula", check_formula, parsed, settings)
    v.checks["multiplicity"] = _guard("multiplicity", check_multiplicity, parsed)
    v.checks["sites_formula"] = _guard("sites_formula", check_sites_formula, parsed, structure, settings)
    v.checks["compositional"] = _guard("compositional", check_compositional, structure, settings)
    if v.checks["cell"].ok:
        sga = None
        equivalent = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sga = _sga(structure, settings)
                equivalent = sga.get_symmetry_dataset().equivalent_atoms
        except Exception:
            sga = None
        v.checks["space_group"] = _guard("space_group", check_space_group, parsed, structure, settings, sga)
        if v.checks["space_group"].value is not None:
            v.sg_detected = int(v.checks["space_group"].value)
        v.checks["structural"] = _guard("structural", check_structural, structure, settings)
        v.checks["bond_length"] = _guard("bond_length", check_bond_lengths, structure, settings, equivalent)
    else:
        for name in ("space_group", "structural", "bond_length"):
            v.checks[name] = _skip(name, "cell")
    v.checks.update(_crystallm(parsed, settings))
    v.checks = {name: v.checks[name] for name in CHECK_NAMES}
    v.consistent = all(v.checks[c].ok for c in CONSISTENCY_CHECKS)
    v.consistent_strict = all(v.checks[c].ok for c in STRICT_CONSISTENCY_CHECKS)
    v.valid = all(v.checks[c].ok for c in VALIDITY_CHECKS)
    v.valid_all = v.consistent and v.valid
    order = ("parse", "cell", "structural", "compositional", *CONSISTENCY_CHECKS, *STRICT_CONSISTENCY_CHECKS)
    v.reason = next((v.checks[c].reason for c in order if v.checks[c].ok is not True), "")
    v.time_s = time.perf_counter() - t0
    return v


def failure_summary(verdict: dict[str, Any]) -> str:
    """"ok", or "<check>: <reason> (<detail>)" of the first failing check of a verdict (detail cut to 160 characters)."""
    reason = verdict.get("reason") or ""
    if not reason:
        return "ok"
    for name, c in (verdict.get("checks") or {}).items():
        if c.get("ok") is False and c.get("reason") == reason:
            detail = " ".join(str(c.get("detail") or "").split())
            return f"{name}: {reason}" + (f" ({detail[:160]})" if detail else "")
    return reason
