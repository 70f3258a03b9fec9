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
    _atom_site_fract_x
    _atom_site_fract_y
    _atom_site_fract_z
    _atom_site_occupancy
    Na Na0 4 0.0000 0.0000 0.0000 1
    Cl Cl1 4 0.5000 0.5000 0.5000 1

Only symmetry-unique sites are written; the symmetry operators are not. Parsing re-derives them from the
space-group number (spglib's default Hall setting, the setting spglib standardizes to). ``mode="p1"`` writes
every site of the Niggli-reduced cell with space group ``P1``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import spglib
from pymatgen.core import Composition, Element, Lattice, Structure

__all__ = [
    "CanonicalCIF",
    "CIFError",
    "SiteRow",
    "SPACE_GROUP_SYMBOLS",
    "format_formula",
    "parse_canonical",
    "structure_to_text",
    "text_to_structure",
    "space_group_number",
    "space_group_symbol",
]

DECIMALS = 4
#: Bumped whenever the text a structure serializes to changes (cached canonicalizations are keyed on it).
CANONICAL_VERSION = 2
#: Cartesian distance (Angstrom) under which two symmetry images are the same site when expanding a parsed CIF.
MERGE_TOL_ANGSTROM = 0.02
LOOP_TAGS = (
    "_atom_site_type_symbol",
    "_atom_site_label",
    "_atom_site_symmetry_multiplicity",
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


class CIFError(ValueError):
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


@lru_cache(maxsize=230)
def _symmetry_ops(number: int) -> tuple[np.ndarray, np.ndarray]:
    hall = _hall_table()[number][0]
    sym = spglib.get_symmetry_from_database(hall)
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


def _num(x: float) -> str:
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


def _orbits(frac: np.ndarray, types: np.ndarray, sg_number: int, tol: float = 1e-3) -> list[list[int]]:
    """Group atoms of a standardized cell into symmetry orbits (fractional tolerance ``tol``)."""
    rots, trans = _symmetry_ops(sg_number)
    n = len(frac)
    orbit = np.full(n, -1)
    groups: list[list[int]] = []
    for j in range(n):
        if orbit[j] >= 0:
            continue
        imgs = np.einsum("oij,j->oi", rots, frac[j]) + trans  # (n_ops, 3)
        d = imgs[:, None, :] - frac[None, :, :]
        d -= np.round(d)
        hit = (np.abs(d).max(axis=2) < tol).any(axis=0) & (types == types[j]) & (orbit < 0)
        hit[j] = True
        members = np.flatnonzero(hit).tolist()
        orbit[members] = len(groups)
        groups.append(members)
    return groups


def _idealize(frac: np.ndarray, lattice: np.ndarray, sg_number: int, tol: float) -> np.ndarray:
    """Move a site onto its special position: average its images under the space-group operators that land within
    ``tol`` Angstrom of it (its site-symmetry group). spglib's standardized positions can sit up to ``symprec`` off."""
    rots, trans = _symmetry_ops(sg_number)
    imgs = np.einsum("oij,j->oi", rots, frac) + trans
    d = imgs - frac
    d -= np.round(d)
    close = np.linalg.norm(d @ lattice, axis=1) < tol
    return frac + d[close].mean(axis=0)


def _lattice_params(matrix: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    lat = Lattice(matrix)
    return tuple(lat.abc), tuple(lat.angles)


def _render(
    cell_comp: Composition,
    sg_number: int,
    abc: tuple[float, ...],
    angles: tuple[float, ...],
    rows: list[tuple[str, int, np.ndarray, float]],
) -> str:
    abc_r = [round(v, DECIMALS) for v in abc]
    ang_r = [round(v, DECIMALS) for v in angles]
    volume = Lattice.from_parameters(*abc_r, *ang_r).volume
    reduced, z = cell_comp.get_reduced_composition_and_factor()
    z_int = int(round(z)) if abs(z - round(z)) < 1e-6 and round(z) >= 1 else 1
    lines = [
        f"data_{format_formula(cell_comp)}",
        f"_symmetry_space_group_name_H-M {space_group_symbol(sg_number)}",
        f"_symmetry_Int_Tables_number {sg_number}",
        f"_cell_length_a {_num(abc_r[0])}",
        f"_cell_length_b {_num(abc_r[1])}",
        f"_cell_length_c {_num(abc_r[2])}",
        f"_cell_angle_alpha {_num(ang_r[0])}",
        f"_cell_angle_beta {_num(ang_r[1])}",
        f"_cell_angle_gamma {_num(ang_r[2])}",
        f"_cell_volume {_num(volume)}",
        f"_cell_formula_units_Z {z_int}",
        f"_chemical_formula_structural {format_formula(reduced, reduced=True)}",
        "loop_",
        *LOOP_TAGS,
    ]
    for i, (sym, mult, frac, occ) in enumerate(rows):
        occ_s = "1" if abs(occ - 1.0) < 1e-6 else _num(occ)
        lines.append(f"{sym} {sym}{i} {mult} {_num(frac[0])} {_num(frac[1])} {_num(frac[2])} {occ_s}")
    return "\n".join(lines) + "\n"


def _el_order(symbol: str) -> tuple[float, str]:
    x = Element(symbol).X
    return (x if x == x else 99.0, symbol)


def structure_to_text(structure: Structure, symprec: float = 0.1, mode: str = "symmetrized", angle_tolerance: float = 5.0) -> str:
    """Serialize ``structure`` as canonical CIF text.

    ``symprec`` (Angstrom) and ``angle_tolerance`` (degrees) are spglib's tolerances. Oxidation states are dropped.
    Partially occupied sites are written as one row per species at the same position. Raises :class:`CIFError`.
    """
    if mode not in ("symmetrized", "p1"):
        raise CIFError("bad_mode", f"mode must be 'symmetrized' or 'p1', got {mode!r}")
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
        orbits = [(red_types[i], 1, frac[i]) for i in range(len(red))]
        sg_number = 1
    else:
        cell = (structure.lattice.matrix, structure.frac_coords, types)
        ds = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance)
        if ds is None:
            raise CIFError("symmetry_failed", f"spglib found no symmetry at symprec={symprec}")
        sg_number = int(ds.number)
        if _hall_table()[sg_number][0] != int(ds.hall_number):
            # spglib standardizes to the default Hall setting; anything else would break the re-derivation.
            raise CIFError("symmetry_failed", f"non-default Hall setting {ds.hall_number} for space group {sg_number}")
        abc, angles = _lattice_params(ds.std_lattice)
        std_frac = _wrap(np.asarray(ds.std_positions))
        std_types = np.asarray(ds.std_types)
        # orbits in the standardized cell: apply the space group's own operators (default Hall setting)
        orbits = []
        std_pos = np.asarray(ds.std_positions)
        std_lat = np.asarray(ds.std_lattice)
        for members in _orbits(std_pos, std_types, sg_number, tol=symprec / max(min(np.linalg.norm(std_lat, axis=1)), 1e-6)):
            coords = std_frac[members]
            rep = min(range(len(members)), key=lambda m: tuple(coords[m]))
            ideal = _idealize(std_pos[members[rep]], std_lat, sg_number, symprec)
            orbits.append((int(std_types[members[0]]), len(members), _wrap(ideal[None, :])[0]))

    rows: list[tuple[str, int, np.ndarray, float]] = []
    cell_amounts: dict[str, float] = {}
    for t, mult, frac in orbits:
        for sym, occ in key_of[t]:
            rows.append((sym, mult, frac, occ))
            cell_amounts[sym] = cell_amounts.get(sym, 0.0) + mult * occ
    rows.sort(key=lambda r: (_el_order(r[0]), -r[3], r[1], tuple(r[2])))
    return _render(Composition(cell_amounts), sg_number, abc, angles, rows)


_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_ROW_RE = re.compile(rf"^([A-Z][a-z]?)\s+(\S+)\s+(\d+)\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})$")


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
    if i >= len(lines):
        raise CIFError("no_atom_loop", "no loop_ with atom sites")
    i += 1
    tags = []
    while i < len(lines) and lines[i].startswith("_"):
        tags.append(lines[i])
        i += 1
    if tuple(tags) != LOOP_TAGS:
        raise CIFError("bad_loop_header", f"atom-site loop tags {tags}")
    sites = []
    for ln in lines[i:]:
        m = _ROW_RE.match(ln)
        if not m:
            raise CIFError("bad_site_row", repr(ln[:80]))
        sym = m.group(1)
        try:
            Element(sym)
        except ValueError:
            raise CIFError("unknown_element", sym) from None
        frac = tuple(_parse_float("fract", m.group(k)) for k in (4, 5, 6))
        occ = _parse_float("occupancy", m.group(7))
        sites.append(SiteRow(sym, m.group(2), int(m.group(3)), frac, occ))  # type: ignore[arg-type]
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
    return CanonicalCIF(formula, sg_symbol, sg_number, abc, angles, volume, z, header["_chemical_formula_structural"], tuple(sites))  # type: ignore[arg-type]


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
    rots, trans = _symmetry_ops(number)
    # group rows sharing a position (disordered sites) into one site
    positions: list[np.ndarray] = []
    species: list[dict[str, float]] = []
    row_site: list[int] = []
    for row in parsed.sites:
        f = np.asarray(row.frac)
        for k, p in enumerate(positions):
            d = f - p
            if np.linalg.norm(lattice.get_cartesian_coords(d - np.round(d))) < merge_tol:
                species[k][row.symbol] = species[k].get(row.symbol, 0.0) + row.occupancy
                row_site.append(k)
                break
        else:
            positions.append(f)
            species.append({row.symbol: row.occupancy})
            row_site.append(len(positions) - 1)
    all_sp: list[dict[str, float]] = []
    all_frac: list[np.ndarray] = []
    site_mult: list[int] = []
    mat = lattice.matrix
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
    for sp in species:
        tot = sum(sp.values())
        if tot <= 0 or tot > 1.0 + 1e-3 or min(sp.values()) <= 0:
            raise CIFError("bad_occupancy", f"site occupancy {sp}")
    return Structure(lattice, species, frac)
