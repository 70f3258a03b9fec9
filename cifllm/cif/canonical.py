"""Canonical CIF text: the one serialization every model in cifllm reads and writes.

Layout (symmetrized mode, the default)::

    data_Na4Cl4                              <- cell formula, electronegativity order
    _symmetry_space_group_name_H-M Fm-3m     <- spglib short symbol (standard setting)
    _symmetry_Int_Tables_number 225
    _cell_length_a 5.6903                    <- Angstrom, 4 decimals
    _cell_length_b 5.6903
    _cell_length_c 5.6903
    _cell_angle_alpha 90.0000                <- degrees, 4 decimals
    _cell_angle_beta 90.0000
    _cell_angle_gamma 90.0000
    _cell_volume 184.2532                    <- Angstrom^3 of the written cell
    _cell_formula_units_Z 4
    _chemical_formula_structural NaCl        <- reduced formula
    loop_
    _atom_site_type_symbol
    _atom_site_label
    _atom_site_symmetry_multiplicity
    _atom_site_Wyckoff_symbol                <- v2 only
    _atom_site_fract_x
    _atom_site_fract_y
    _atom_site_fract_z
    _atom_site_occupancy
    Na Na0 4 a 0.0000 0.0000 0.0000 1
    Cl Cl1 4 b 0.5000 0.5000 0.5000 1

Only symmetry-unique sites are written; the symmetry operators are not. Parsing re-derives them from the
space-group number. ``mode="p1"`` writes every site of the Niggli-reduced cell with space group ``P1``.

Two text formats (:data:`TEXT_FORMATS`), told apart by the atom-site loop header:

* ``cif-v2`` (default): the ITA standard setting (origin choice 2, hexagonal axes, unique axis b: the setting of
  :mod:`cifllm.cif.wyckoff`), a Wyckoff letter per row (spglib's, for the standardized cell), and every row's
  coordinates in the form of the ITA first representative of its position (``x,0,0``; ``x,2x,z``), so fixed and
  tied coordinates are predictable; a free coordinate is the written number, a tied one is computed from the
  free ones *after* rounding (:func:`cifllm.cif.wyckoff.wyckoff_coords`). Parsing checks each row lies on its
  stated Wyckoff orbit (reason ``wyckoff_mismatch``).
* ``cif-v1``: spglib's default Hall setting (origin choice 1), no Wyckoff column, representative = the smallest
  fractional coordinates. Still parsed and written (v1 models keep working), but it cannot be fully constrained.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import spglib
from pymatgen.core import Composition, Element, Lattice, Structure

from cifllm.cif.wyckoff import coordinate_plan, hall_number_v2, space_group_wyckoff, wyckoff_coords
from cifllm.errors import CifllmError

__all__ = [
    "CanonicalCIF",
    "CIFError",
    "LOOP_TAGS",
    "LOOP_TAGS_V1",
    "MAX_FORMULA_CHARS",
    "OCCUPANCY_TOLERANCE",
    "TEXT_FORMATS",
    "cell_volume",
    "check_wyckoff",
    "element_order",
    "format_number",
    "hall_number",
    "TEXT_FORMAT",
    "text_format_of",
    "SiteRow",
    "SPACE_GROUP_SYMBOLS",
    "format_formula",
    "parse_canonical",
    "structure_to_text",
    "symmetry_ops",
    "text_to_structure",
    "normalized_occupancy",
    "space_group_number",
    "space_group_symbol",
]

DECIMALS = 4
#: Bumped whenever the text a structure serializes to changes (cached canonicalizations are keyed on it).
CANONICAL_VERSION = 3
#: The text formats: ``cif-v2`` is written by default; ``cif-v1`` texts (older models, corpora) still parse.
TEXT_FORMATS = ("cif-v1", "cif-v2")
TEXT_FORMAT = "cif-v2"
#: Cartesian tolerance (Angstrom) for a row's coordinates to lie on its stated Wyckoff orbit (4-decimal rounding of
#: a 200 Angstrom axis moves a site by 0.01 Angstrom).
WYCKOFF_TOL_ANGSTROM = 0.05
#: Cartesian distance (Angstrom) under which two symmetry images are the same site when expanding a parsed CIF.
MERGE_TOL_ANGSTROM = 0.02
#: A site whose occupancies sum to more than 1 but at most ``1 + OCCUPANCY_TOLERANCE`` is rescaled to a total of 1
#: before pymatgen sees it; a larger total is rejected (``bad_occupancy``). The one tolerance of every text reader
#: (:func:`text_to_structure` here, :func:`cifllm.cif.io.read_cif_text` for any CIF): it covers float noise
#: (``1.0000000000000002``), the 4-decimal rounding of canonical text and the 2-decimal rounding of two refined
#: occupancies that share a site (0.505 + 0.505 -> 0.51 + 0.51); a larger excess is an error, not a rounding.
OCCUPANCY_TOLERANCE = 0.01
#: Longest formula (the ``data_`` line, ``_chemical_formula_structural``, a CIF's ``_chemical_formula_sum``) read, in
#: characters; longer is ``formula_too_long``. A cell formula of 94 elements with 9-character amounts is ~1,000
#: characters; pymatgen's formula parser took 17-25 s on a 1.6 MB one.
MAX_FORMULA_CHARS = 2000
LOOP_TAGS_V1 = (
    "_atom_site_type_symbol",
    "_atom_site_label",
    "_atom_site_symmetry_multiplicity",
    "_atom_site_fract_x",
    "_atom_site_fract_y",
    "_atom_site_fract_z",
    "_atom_site_occupancy",
)
#: The v2 atom-site loop (the default); :data:`LOOP_TAGS_V1` is the v1 loop.
LOOP_TAGS = (
    "_atom_site_type_symbol",
    "_atom_site_label",
    "_atom_site_symmetry_multiplicity",
    "_atom_site_Wyckoff_symbol",
    "_atom_site_fract_x",
    "_atom_site_fract_y",
    "_atom_site_fract_z",
    "_atom_site_occupancy",
)
HEADER_TAGS = (
    "_symmetry_space_group_name_H-M",
    "_symmetry_Int_Tables_number",
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
    "_cell_volume",
    "_cell_formula_units_Z",
    "_chemical_formula_structural",
)


class CIFError(CifllmError, ValueError):
    """A CIF text that cannot be serialized or parsed; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@lru_cache(maxsize=1)
def _hall_table() -> dict[int, tuple[int, str]]:
    """Space-group number -> (default Hall number, spglib short H-M symbol)."""
    table: dict[int, tuple[int, str]] = {}
    for hall in range(1, 531):
        sg = spglib.get_spacegroup_type(hall)
        table.setdefault(sg.number, (hall, sg.international_short))
    return table


#: The 230 space-group symbols as written in canonical text, indexed by number - 1.
SPACE_GROUP_SYMBOLS: tuple[str, ...] = tuple(_hall_table()[n][1] for n in range(1, 231))
_SYMBOL_TO_NUMBER = {s: i + 1 for i, s in enumerate(SPACE_GROUP_SYMBOLS)}


def space_group_symbol(number: int) -> str:
    """Canonical H-M symbol of space group ``number`` (1-230)."""
    if not 1 <= number <= 230:
        raise CIFError("bad_space_group", f"space-group number {number} not in 1..230")
    return SPACE_GROUP_SYMBOLS[number - 1]


def space_group_number(symbol: str) -> int:
    """Number of a canonical H-M symbol (as written by :func:`structure_to_text`)."""
    try:
        return _SYMBOL_TO_NUMBER[symbol]
    except KeyError:
        raise CIFError("bad_space_group", f"unknown space-group symbol {symbol!r}") from None


def hall_number(number: int, text_format: str = TEXT_FORMAT) -> int:
    """spglib Hall number of the setting ``text_format`` writes space group ``number`` in."""
    if text_format == "cif-v1":
        return _hall_table()[number][0]
    return hall_number_v2(number)


@lru_cache(maxsize=512)
def symmetry_ops(number: int, text_format: str = TEXT_FORMAT) -> tuple[np.ndarray, np.ndarray]:
    """(rotations (n, 3, 3), translations (n, 3)) of space group ``number`` in the setting ``text_format`` writes it in
    (fractional coordinates; spglib's database, cached)."""
    sym = spglib.get_symmetry_from_database(hall_number(number, text_format))
    return np.asarray(sym["rotations"], dtype=float), np.asarray(sym["translations"], dtype=float)


def _fmt_amount(x: float) -> str:
    if abs(x - round(x)) < 1e-6:
        return str(int(round(x)))
    return f"{x:.4f}".rstrip("0").rstrip(".")


def format_formula(composition: Composition | str, reduced: bool = False) -> str:
    """Formula as canonical text writes it: electronegativity order, explicit counts, no spaces.

    ``Composition("NaCl") * 4`` -> ``"Na4Cl4"``; ``reduced=True`` gives ``"NaCl"`` (counts of 1 omitted).
    """
    comp = Composition(composition) if isinstance(composition, str) else composition
    if reduced:
        comp = comp.reduced_composition
    items = sorted(comp.element_composition.items(), key=lambda kv: (kv[0].X if kv[0].X == kv[0].X else 99, kv[0].symbol))
    parts = []
    for el, amt in items:
        a = _fmt_amount(amt)
        parts.append(el.symbol if (reduced and a == "1") else f"{el.symbol}{a}")
    return "".join(parts)


def format_number(x: float) -> str:
    """A number as canonical text writes it: ``DECIMALS`` (4) decimals, ``-0.0000`` written ``0.0000``."""
    s = f"{x + 0.0:.{DECIMALS}f}"
    return "0.0000" if s == "-0.0000" else s


def _wrap(x: np.ndarray) -> np.ndarray:
    """Wrap fractional coordinates into [0, 1) *after* rounding, so 0.99999 -> 0.0000."""
    y = np.round(np.mod(x, 1.0), DECIMALS)
    y = np.mod(y, 1.0)
    y[np.isclose(y, 1.0, atol=10 ** -(DECIMALS + 1))] = 0.0
    return y + 0.0


def _species_key(site_species: Composition) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((el.symbol, round(float(occ), 6)) for el, occ in site_species.element_composition.items()))


@dataclass(frozen=True)
class SiteRow:
    """One row of the atom-site loop."""

    symbol: str
    label: str
    multiplicity: int
    frac: tuple[float, float, float]
    occupancy: float
    wyckoff: str = ""  # v2 only


@dataclass(frozen=True)
class CanonicalCIF:
    """The fields of a canonical CIF text, parsed without pymatgen (cheap, used by the checks)."""

    formula: str
    sg_symbol: str
    sg_number: int
    abc: tuple[float, float, float]
    angles: tuple[float, float, float]
    volume: float
    z: int
    reduced_formula: str
    sites: tuple[SiteRow, ...] = field(default_factory=tuple)
    text_format: str = TEXT_FORMAT


def _orbits(frac: np.ndarray, types: np.ndarray, sg_number: int, lattice: np.ndarray, tol: float, text_format: str = "cif-v1") -> list[list[int]]:
    """Group atoms of a standardized cell into symmetry orbits: an image within ``tol`` Angstrom (Cartesian, so a
    long axis gets no looser tolerance than a short one) is the same atom."""
    rots, trans = symmetry_ops(sg_number, text_format)
    n = len(frac)
    orbit = np.full(n, -1)
    groups: list[list[int]] = []
    for j in range(n):
        if orbit[j] >= 0:
            continue
        imgs = np.einsum("oij,j->oi", rots, frac[j]) + trans  # (n_ops, 3)
        d = imgs[:, None, :] - frac[None, :, :]
        d -= np.round(d)
        hit = (np.linalg.norm(d @ lattice, axis=2) < tol).any(axis=0) & (types == types[j]) & (orbit < 0)
        hit[j] = True
        members = np.flatnonzero(hit).tolist()
        orbit[members] = len(groups)
        groups.append(members)
    return groups


def _idealize(frac: np.ndarray, lattice: np.ndarray, sg_number: int, tol: float, text_format: str = "cif-v1") -> np.ndarray:
    """Move a site onto its special position: average its images under the space-group operators that land within
    ``tol`` Angstrom of it (its site-symmetry group). spglib's standardized positions can sit up to ``symprec`` off."""
    rots, trans = symmetry_ops(sg_number, text_format)
    imgs = np.einsum("oij,j->oi", rots, frac) + trans
    d = imgs - frac
    d -= np.round(d)
    close = np.linalg.norm(d @ lattice, axis=1) < tol
    return frac + d[close].mean(axis=0)


def _lattice_params(matrix: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    lat = Lattice(matrix)
    return tuple(lat.abc), tuple(lat.angles)


def cell_volume(abc: tuple[float, ...], angles: tuple[float, ...]) -> float:
    """Volume (Angstrom^3) of the cell with lengths ``abc`` (Angstrom) and ``angles`` (degrees), as written numbers."""
    return float(Lattice.from_parameters(*abc, *angles).volume)


def _render(
    cell_comp: Composition,
    sg_number: int,
    abc: tuple[float, ...],
    angles: tuple[float, ...],
    rows: list[tuple[str, int, np.ndarray, float, str]],
    text_format: str = TEXT_FORMAT,
) -> str:
    abc_r = [round(v, DECIMALS) for v in abc]
    ang_r = [round(v, DECIMALS) for v in angles]
    volume = cell_volume(abc_r, ang_r)
    reduced, z = cell_comp.get_reduced_composition_and_factor()
    z_int = int(round(z)) if abs(z - round(z)) < 1e-6 and round(z) >= 1 else 1
    lines = [
        f"data_{format_formula(cell_comp)}",
        f"_symmetry_space_group_name_H-M {space_group_symbol(sg_number)}",
        f"_symmetry_Int_Tables_number {sg_number}",
        f"_cell_length_a {format_number(abc_r[0])}",
        f"_cell_length_b {format_number(abc_r[1])}",
        f"_cell_length_c {format_number(abc_r[2])}",
        f"_cell_angle_alpha {format_number(ang_r[0])}",
        f"_cell_angle_beta {format_number(ang_r[1])}",
        f"_cell_angle_gamma {format_number(ang_r[2])}",
        f"_cell_volume {format_number(volume)}",
        f"_cell_formula_units_Z {z_int}",
        f"_chemical_formula_structural {format_formula(reduced, reduced=True)}",
        "loop_",
        *(LOOP_TAGS_V1 if text_format == "cif-v1" else LOOP_TAGS),
    ]
    for i, (sym, mult, frac, occ, letter) in enumerate(rows):
        occ_s = "1" if abs(occ - 1.0) < 1e-6 else format_number(occ)
        xyz = f"{format_number(frac[0])} {format_number(frac[1])} {format_number(frac[2])}"
        if text_format == "cif-v1":
            lines.append(f"{sym} {sym}{i} {mult} {xyz} {occ_s}")
        else:
            lines.append(f"{sym} {sym}{i} {mult} {letter} {xyz} {occ_s}")
    return "\n".join(lines) + "\n"


def element_order(symbol: str) -> tuple[float, str]:
    """Sort key of an element in canonical text: Pauling electronegativity (99 where pymatgen has none), then symbol."""
    x = Element(symbol).X
    return (x if x == x else 99.0, symbol)


def structure_to_text(
    structure: Structure, symprec: float = 0.1, mode: str = "symmetrized", angle_tolerance: float = 5.0, text_format: str = TEXT_FORMAT
) -> str:
    """Serialize ``structure`` as canonical CIF text (``text_format`` ``cif-v2``, the default, or ``cif-v1``).

    ``symprec`` (Angstrom) and ``angle_tolerance`` (degrees) are spglib's tolerances; symmetry images closer than
    ``symprec`` Angstrom (Cartesian) are one atom. Oxidation states are dropped. Partially occupied sites are written
    as one row per species at the same position. Raises :class:`CIFError`.
    """
    if mode not in ("symmetrized", "p1"):
        raise CIFError("bad_mode", f"mode must be 'symmetrized' or 'p1', got {mode!r}")
    if text_format not in TEXT_FORMATS:
        raise CIFError("bad_text_format", f"text_format must be one of {TEXT_FORMATS}, got {text_format!r}")
    if len(structure) == 0:
        raise CIFError("empty_structure", "structure has no sites")
    # one spglib "type" per distinct site composition (covers disorder)
    keys: dict[tuple, int] = {}
    types = []
    for site in structure:
        k = _species_key(site.species)
        types.append(keys.setdefault(k, len(keys) + 1))
    key_of = {v: k for k, v in keys.items()}

    if mode == "p1":
        red = structure.get_reduced_structure()
        abc, angles = red.lattice.abc, red.lattice.angles
        frac = _wrap(red.frac_coords)
        red_types = [keys[_species_key(s.species)] for s in red]
        orbits = [(red_types[i], 1, frac[i], "a") for i in range(len(red))]
        sg_number = 1
    elif text_format == "cif-v1":
        sg_number, abc, angles, orbits = _orbits_v1(structure, types, symprec, angle_tolerance)
    else:
        sg_number, abc, angles, orbits = _orbits_v2(structure, types, symprec, angle_tolerance)

    rows: list[tuple[str, int, np.ndarray, float, str]] = []
    cell_amounts: dict[str, float] = {}
    for t, mult, frac, letter in orbits:
        for sym, occ in key_of[t]:
            rows.append((sym, mult, frac, occ, letter))
            cell_amounts[sym] = cell_amounts.get(sym, 0.0) + mult * occ
    rows.sort(key=lambda r: (element_order(r[0]), -r[3], r[1], _letter_key(r[4]), tuple(r[2])))
    return _render(Composition(cell_amounts), sg_number, abc, angles, rows, text_format)


def _letter_key(letter: str) -> int:
    return "abcdefghijklmnopqrstuvwxyzA".find(letter)


def _dataset(structure: Structure, types: list[int], symprec: float, angle_tolerance: float, hall: int = 0):
    cell = (structure.lattice.matrix, structure.frac_coords, types)
    ds = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance, hall_number=hall)
    if ds is None:
        raise CIFError("symmetry_failed", f"spglib found no symmetry at symprec={symprec}")
    return ds


def _orbits_v1(structure: Structure, types: list[int], symprec: float, angle_tolerance: float):
    ds = _dataset(structure, types, symprec, angle_tolerance)
    sg_number = int(ds.number)
    if _hall_table()[sg_number][0] != int(ds.hall_number):
        # spglib standardizes to the default Hall setting; anything else would break the re-derivation.
        raise CIFError("symmetry_failed", f"non-default Hall setting {ds.hall_number} for space group {sg_number}")
    abc, angles = _lattice_params(ds.std_lattice)
    std_frac = _wrap(np.asarray(ds.std_positions))
    std_types = np.asarray(ds.std_types)
    std_pos = np.asarray(ds.std_positions)
    std_lat = np.asarray(ds.std_lattice)
    orbits = []
    for members in _orbits(std_pos, std_types, sg_number, std_lat, symprec):
        coords = std_frac[members]
        rep = min(range(len(members)), key=lambda m: tuple(coords[m]))
        ideal = _idealize(std_pos[members[rep]], std_lat, sg_number, symprec)
        orbits.append((int(std_types[members[0]]), len(members), _wrap(ideal[None, :])[0], ""))
    return sg_number, abc, angles, orbits


def _orbits_v2(structure: Structure, types: list[int], symprec: float, angle_tolerance: float):
    """Standardize into the ITA setting, group the standardized atoms into orbits and letters with spglib (run on the
    standardized cell, so the letters belong to the setting the text is written in), and write each orbit at its
    first-representative form."""
    first = _dataset(structure, types, symprec, angle_tolerance)
    sg_number = int(first.number)
    hall = hall_number_v2(sg_number)
    ds = first if int(first.hall_number) == hall else _dataset(structure, types, symprec, angle_tolerance, hall)
    std_lat = np.asarray(ds.std_lattice)
    std_pos = np.asarray(ds.std_positions)
    std_types = np.asarray(ds.std_types)
    std = spglib.get_symmetry_dataset((std_lat, std_pos, std_types), symprec=symprec, angle_tolerance=angle_tolerance, hall_number=hall)
    if std is None or int(std.number) != sg_number:
        raise CIFError("symmetry_failed", f"standardized cell of space group {sg_number} does not keep its symmetry")
    shift = np.asarray(std.origin_shift) - np.round(std.origin_shift)
    if not np.allclose(std.transformation_matrix, np.eye(3), atol=1e-6) or np.linalg.norm(shift @ std_lat) > symprec:
        raise CIFError("symmetry_failed", f"standardized cell of space group {sg_number} is not in its own setting")
    abc, angles = _lattice_params(std_lat)
    positions = {w.letter: w for w in space_group_wyckoff(sg_number)}
    rots, trans = symmetry_ops(sg_number, "cif-v2")
    orbits = []
    equiv = np.asarray(std.equivalent_atoms)
    for rep_atom in sorted(set(equiv.tolist())):
        members = np.flatnonzero(equiv == rep_atom)
        letter = str(std.wyckoffs[rep_atom])
        wp = positions.get(letter)
        if wp is None or wp.multiplicity != len(members):
            raise CIFError("wyckoff_mismatch", f"space group {sg_number}: orbit of {len(members)} atoms, letter {letter!r}")
        # images of one member under the group; keep those in first-representative form
        imgs = np.einsum("oij,j->oi", rots, std_pos[rep_atom]) + trans
        proj = imgs @ np.asarray(wp.rot, dtype=float).T + np.asarray(wp.trans)
        d = proj - imgs
        d -= np.round(d)
        ok = np.flatnonzero(np.linalg.norm(d @ std_lat, axis=1) < max(symprec, 1e-3))
        if len(ok) == 0:
            raise CIFError("wyckoff_mismatch", f"space group {sg_number} {letter}: no image in first-representative form")
        plan = coordinate_plan(sg_number, letter)
        free = [i for i, step in enumerate(plan) if step[0] == "free"]
        candidates = []
        for k in ok:
            written = {i: float(_wrap(np.asarray([proj[k][i]]))[0]) for i in free}
            candidates.append(wyckoff_coords(sg_number, letter, written))
        coords = min(candidates)
        orbits.append((int(std_types[rep_atom]), wp.multiplicity, np.asarray(coords, dtype=float), letter))
    return sg_number, abc, angles, orbits


_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_ROW_RE_V1 = re.compile(rf"^([A-Z][a-z]?)\s+(\S+)\s+(\d+)\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})$")
_ROW_RE_V2 = re.compile(rf"^([A-Z][a-z]?)\s+(\S+)\s+(\d+)\s+([a-zA])\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})$")


def _parse_float(tag: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise CIFError("bad_number", f"{tag} = {value!r}") from None
    if not math.isfinite(x):
        raise CIFError("bad_number", f"{tag} = {value!r}")
    return x


def parse_canonical(text: str) -> CanonicalCIF:
    """Parse the fields of a canonical CIF text (no symmetry expansion). Raises :class:`CIFError` with a reason."""
    if not isinstance(text, str) or not text.strip():
        raise CIFError("empty", "no text")
    lines = [ln.strip() for ln in text.strip().splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines[0].startswith("data_") or len(lines[0]) <= 5:
        raise CIFError("no_data_block", f"first line {lines[0][:40]!r} is not data_<formula>")
    formula = lines[0][5:]
    if len(formula) > MAX_FORMULA_CHARS:
        raise CIFError("formula_too_long", f"data_ formula of {len(formula)} characters > {MAX_FORMULA_CHARS}")
    header: dict[str, str] = {}
    i = 1
    while i < len(lines) and lines[i] != "loop_":
        parts = lines[i].split(None, 1)
        if len(parts) != 2 or not parts[0].startswith("_"):
            raise CIFError("bad_line", f"line {i + 1}: {lines[i][:60]!r}")
        if parts[0] in header:
            raise CIFError("duplicate_tag", parts[0])
        header[parts[0]] = parts[1].strip().strip("'\"")
        i += 1
    missing = [t for t in HEADER_TAGS if t not in header]
    if missing:
        raise CIFError("missing_tag", ", ".join(missing))
    if len(header["_chemical_formula_structural"]) > MAX_FORMULA_CHARS:
        raise CIFError("formula_too_long", f"_chemical_formula_structural of {len(header['_chemical_formula_structural'])} characters > {MAX_FORMULA_CHARS}")
    if i >= len(lines):
        raise CIFError("no_atom_loop", "no loop_ with atom sites")
    i += 1
    tags = []
    while i < len(lines) and lines[i].startswith("_"):
        tags.append(lines[i])
        i += 1
    if tuple(tags) == LOOP_TAGS:
        text_format, row_re, off = "cif-v2", _ROW_RE_V2, 1
    elif tuple(tags) == LOOP_TAGS_V1:
        text_format, row_re, off = "cif-v1", _ROW_RE_V1, 0
    else:
        raise CIFError("bad_loop_header", f"atom-site loop tags {tags}")
    sites = []
    for ln in lines[i:]:
        m = row_re.match(ln)
        if not m:
            raise CIFError("bad_site_row", repr(ln[:80]))
        sym = m.group(1)
        try:
            Element(sym)
        except ValueError:
            raise CIFError("unknown_element", sym) from None
        frac = tuple(_parse_float("fract", m.group(k + off)) for k in (4, 5, 6))
        occ = _parse_float("occupancy", m.group(7 + off))
        letter = m.group(4) if off else ""
        sites.append(SiteRow(sym, m.group(2), int(m.group(3)), frac, occ, letter))  # type: ignore[arg-type]
    if not sites:
        raise CIFError("no_sites", "atom-site loop is empty")
    sg_symbol = header["_symmetry_space_group_name_H-M"]
    try:
        sg_number = int(header["_symmetry_Int_Tables_number"])
        z = int(header["_cell_formula_units_Z"])
    except ValueError:
        raise CIFError("bad_number", "space-group number or Z is not an integer") from None
    abc = tuple(_parse_float(t, header[t]) for t in HEADER_TAGS[2:5])
    angles = tuple(_parse_float(t, header[t]) for t in HEADER_TAGS[5:8])
    volume = _parse_float("_cell_volume", header["_cell_volume"])
    return CanonicalCIF(formula, sg_symbol, sg_number, abc, angles, volume, z, header["_chemical_formula_structural"], tuple(sites), text_format)  # type: ignore[arg-type]


def text_format_of(text: str) -> str:
    """``cif-v2`` when the text's atom-site loop has the Wyckoff column, else ``cif-v1`` (cheap, no full parse)."""
    return "cif-v2" if "_atom_site_Wyckoff_symbol" in text else "cif-v1"


def check_wyckoff(parsed: CanonicalCIF, lattice: Lattice, tol: float = WYCKOFF_TOL_ANGSTROM) -> None:
    """v2: every row's letter exists in the space group, its multiplicity is the letter's, and its coordinates lie on
    the letter's orbit (some image within ``tol`` Angstrom of the first-representative form). Raises
    :class:`CIFError` ``wyckoff_mismatch``."""
    if parsed.text_format != "cif-v2":
        return
    positions = {w.letter: w for w in space_group_wyckoff(parsed.sg_number)}
    rots, trans = symmetry_ops(parsed.sg_number, "cif-v2")
    for row in parsed.sites:
        wp = positions.get(row.wyckoff)
        if wp is None:
            raise CIFError("wyckoff_mismatch", f"row {row.label}: space group {parsed.sg_number} has no position {row.wyckoff!r}")
        if wp.multiplicity != row.multiplicity:
            raise CIFError("wyckoff_mismatch", f"row {row.label}: {row.wyckoff} has multiplicity {wp.multiplicity}, text says {row.multiplicity}")
        imgs = np.einsum("oij,j->oi", rots, np.asarray(row.frac)) + trans
        d = imgs @ np.asarray(wp.rot, dtype=float).T + np.asarray(wp.trans) - imgs
        d -= np.round(d)
        if np.linalg.norm(d @ lattice.matrix, axis=1).min() > tol:
            raise CIFError("wyckoff_mismatch", f"row {row.label}: {row.frac} is not on Wyckoff orbit {row.multiplicity}{row.wyckoff}")


def expand_sites(parsed: CanonicalCIF, merge_tol: float = MERGE_TOL_ANGSTROM) -> tuple[Lattice, list[dict[str, float]], np.ndarray, list[int]]:
    """Apply the space group's operators to the unique sites.

    Returns the lattice, the species (as {symbol: occupancy}) and fractional coordinates of every site of the cell,
    and the multiplicity actually generated for each loop row (images closer than ``merge_tol`` Angstrom merge).
    """
    number = space_group_number(parsed.sg_symbol)
    if number != parsed.sg_number:
        raise CIFError("space_group_mismatch", f"symbol {parsed.sg_symbol} is number {number}, text says {parsed.sg_number}")
    a, b, c = parsed.abc
    al, be, ga = parsed.angles
    if min(a, b, c) <= 0 or not all(0 < x < 180 for x in (al, be, ga)):
        raise CIFError("bad_cell", f"lengths {parsed.abc} angles {parsed.angles}")
    lattice = Lattice.from_parameters(a, b, c, al, be, ga)
    if not math.isfinite(lattice.volume) or lattice.volume <= 1e-6:
        raise CIFError("bad_cell", f"cell volume {lattice.volume}")
    check_wyckoff(parsed, lattice)
    rots, trans = symmetry_ops(number, parsed.text_format)
    # group rows sharing a position (disordered sites) into one site
    positions: list[np.ndarray] = []
    species: list[dict[str, float]] = []
    row_site: list[int] = []
    mat = lattice.matrix
    for row in parsed.sites:
        f = np.asarray(row.frac)
        hits: np.ndarray = np.zeros(0, dtype=np.int64)
        if positions:  # the first earlier position within merge_tol (vectorized: a P1 text has ~1,000 rows)
            d = f - np.asarray(positions)
            d -= np.round(d)
            hits = np.flatnonzero(np.linalg.norm(d @ mat, axis=1) < merge_tol)
        if len(hits):
            k = int(hits[0])
            species[k][row.symbol] = species[k].get(row.symbol, 0.0) + row.occupancy
            row_site.append(k)
        else:
            positions.append(f)
            species.append({row.symbol: row.occupancy})
            row_site.append(len(positions) - 1)
    all_sp: list[dict[str, float]] = []
    all_frac: list[np.ndarray] = []
    site_mult: list[int] = []
    for sp, f in zip(species, positions):
        imgs = np.mod(rots @ f + trans, 1.0)
        kept: list[np.ndarray] = []
        for im in imgs:
            if kept:
                d = np.asarray(kept) - im
                d -= np.round(d)
                if np.min(np.linalg.norm(d @ mat, axis=1)) < merge_tol:
                    continue
            kept.append(im)
        site_mult.append(len(kept))
        all_frac.extend(kept)
        all_sp.extend([sp] * len(kept))
    return lattice, all_sp, np.asarray(all_frac), [site_mult[k] for k in row_site]


def text_to_structure(text: str, merge_tol: float = MERGE_TOL_ANGSTROM, max_sites: int = 10_000) -> Structure:
    """Parse canonical CIF text into a pymatgen ``Structure``, re-deriving all sites from the space group.

    Raises :class:`CIFError` (reason codes: empty, bad_line, missing_tag, bad_site_row, unknown_element,
    bad_space_group, space_group_mismatch, bad_cell, too_many_sites, bad_occupancy, ...).
    """
    parsed = parse_canonical(text)
    if sum(s.multiplicity for s in parsed.sites) > max_sites or len(parsed.sites) > max_sites:
        raise CIFError("too_many_sites", f"more than {max_sites} sites stated")
    lattice, species, frac, _ = expand_sites(parsed, merge_tol)
    if len(frac) > max_sites:
        raise CIFError("too_many_sites", f"{len(frac)} > {max_sites}")
    return Structure(lattice, [normalized_occupancy(sp) for sp in species], frac)


def normalized_occupancy(species: dict[str, float]) -> dict[str, float]:
    """The occupancies of one site as pymatgen may take them: a total in (1, 1 + :data:`OCCUPANCY_TOLERANCE`] is
    rescaled to 1. Raises :class:`CIFError` ``bad_occupancy`` for a larger total or an occupancy <= 0."""
    tot = sum(species.values())
    if not species or min(species.values()) <= 0 or not tot <= 1.0 + OCCUPANCY_TOLERANCE:
        raise CIFError("bad_occupancy", f"site occupancy {species} (total above 1 + {OCCUPANCY_TOLERANCE}, or an occupancy <= 0)")
    return {el: occ / tot for el, occ in species.items()} if tot > 1.0 else dict(species)
