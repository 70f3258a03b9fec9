"""Per-record processing: parse, filter (each drop has a named reason), canonicalize. Pure functions of one record.

Reasons (stable codes used in reports): ``read_error``, ``unparsable``, ``empty``, ``not_cif``, ``too_large``,
``binary``, ``bad_occupancy``, ``partial_occupancy``, ``formula_unparsable``, ``formula_too_long``,
``hydrogen_missing``, ``formula_disagrees``, ``unsupported_element``, ``too_many_atoms``, ``min_distance``,
``volume_per_atom``, ``symmetry_failed``, ``canonical_composition_changed``, ``timeout`` and ``worker_crash`` (the
per-record time limit of :mod:`cifllm.data.prep`), ``too_many_tokens`` (applied later, after tokenization).

Bounds before expensive work: a CIF text is pre-scanned (:func:`count_atom_site_rows`, linear in its length) and one
with more than ``max_atom_rows`` atom-site rows in a data block, or more than ``max_atom_images`` rows x symmetry
operators, is dropped as ``too_many_atoms`` before pymatgen parses it
(pymatgen's parse time grows faster than linearly with the rows: 8,000 rows take ~18 s). A stated formula longer than
:data:`~cifllm.cif.canonical.MAX_FORMULA_CHARS` is dropped as ``formula_too_long`` before it is parsed.

Several data blocks: the record is the first block that holds a structure (:func:`cifllm.cif.io.structure_block`),
and its stated formula is read from that same block, so a file of several blocks (named alike or not) is kept as its
first structure or dropped, never as another block's compound.

Occupancy: a site's occupancies may sum to at most ``1 +`` :data:`~cifllm.cif.canonical.OCCUPANCY_TOLERANCE` (rescaled
to 1); more is ``bad_occupancy``. A row with occupancy 0 is not an atom (pymatgen skips it).

Cross-checks that catch corruption:

* ``formula_disagrees``: when the CIF states ``_chemical_formula_sum`` (or else ``_chemical_formula_moiety``, its
  moieties summed), the parsed sites must give the same composition. The value is read by
  :func:`cifllm.cif.formula.parse_stated_formula`: groups in brackets (``'Mg3 Si4 (O12 H2)'``), hydrate dots
  (``'Cu S O4 . 5 H2 O'``), moieties with counts and charges. A stated formula that does not parse (a comma inside
  brackets such as ``'(Mg,Fe)2 Si O4'``, an unknown symbol) drops the record as ``formula_unparsable``: the
  cross-check is never skipped for a formula that is there; only a missing, ``?`` or ``.`` formula is not compared.
  Ordered structure and whole-number stated counts: the ratios must agree exactly (every element count of the cell =
  Z x the stated count, one Z for all elements). Otherwise (partial occupancies, fractional stated counts) with Z =
  parsed atoms / stated atoms, every element must satisfy ``|parsed / Z - stated| <= 0.01 + 0.02 x stated`` (stated
  counts rounded to two decimals, plus 2%).
* ``hydrogen_missing`` (the hydrogen rule): a record whose stated formula has hydrogen (H or D) but whose sites give
  none - H never located (common in X-ray structures of hydrous minerals and hydrates), or H rows with occupancy 0 -
  is dropped. Such a site list is an incomplete model, not the compound: kept, it would enter the corpus under the
  formula of its sites (kaolinite Al2Si2O5(OH)4 as "Al2Si2O9", a hydride as the bare metal), a composition that is
  neither stated nor charge-balanced. Hydrogen that is located but in the wrong amount is ``formula_disagrees``, and
  hydrogen in the sites but not in the formula likewise. Records whose H is located in full are kept as any other.
* ``canonical_composition_changed``: the canonical text must keep the composition of the structure it was made from,
  checked on every record (cheap, without the ``StructureMatcher`` round trip): the sites re-derived from the text
  (:func:`cifllm.cif.expand_sites`, multiplicity x occupancy) must hold every element in the same proportion as the
  structure (within 0.5% per element) and as many atoms as the text's cell volume implies (within 10%: symmetrization
  may idealize the cell). This catches canonicalization that merges or drops symmetry orbits.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifllm.cif import CIFError, expand_sites, format_formula, parse_canonical, structure_to_text
from cifllm.cif.formula import parse_stated_formula
from cifllm.cif.io import read_cif_text, structure_block, structure_from_dict
from cifllm.cif.matching import make_matcher, round_trip
from cifllm.data.readers import RawRecord

__all__ = [
    "FilterSettings",
    "Canonical",
    "Reject",
    "process_record",
    "CENTERING_FACTOR",
    "FILTER_VERSION",
    "count_atom_site_rows",
    "count_symmetry_operators",
    "stated_formula",
    "formula_disagreement",
    "hydrogen_missing",
    "canonical_composition_change",
]

#: Bumped whenever :func:`process_record` can give another verdict for the same record and settings (the prep cache
#: is keyed on it). 2: bracketed formulas, first structure block, hydrogen rule, occupancy tolerance (issue 31).
FILTER_VERSION = 2

#: Lattice points per conventional cell by the first letter of the H-M symbol (R: hexagonal setting).
CENTERING_FACTOR = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 3}


@dataclass(frozen=True)
class FilterSettings:
    """Thresholds: distances in Angstrom, volumes in Angstrom^3 per atom, atoms counted in the input cell."""

    symprec: float = 0.1  #: spglib distance tolerance (Angstrom) for the symmetry of the canonical text
    mode: str = "symmetrized"  #: canonical text form: symmetrized (conventional cell, asymmetric unit with Wyckoff letters) or p1 (every atom)
    keep_partial: bool = False  #: keep partially occupied / disordered sites (false: dropped as partial_occupancy)
    max_atoms: int = 200  #: most sites in the input cell (more: dropped as too_many_atoms)
    max_z: int = 94  #: heaviest element (atomic number) kept; beyond it: unsupported_element
    min_distance: float = 0.5  #: smallest interatomic distance (Angstrom) kept; below it: min_distance
    min_volume_per_atom: float = 1.5  #: smallest volume per atom (Angstrom^3) kept; below it: volume_per_atom
    max_volume_per_atom: float = 250.0  #: largest volume per atom (Angstrom^3) kept; above it: volume_per_atom
    verify_round_trip: bool = False  #: also re-parse each canonical text and compare it with the input structure (slower)
    #: pre-scan bound: atom-site rows in one data block (a row generates >= 1 site; 2 x max_atoms leaves room for
    #: rows that share a disordered site). Larger files are dropped (``too_many_atoms``) before pymatgen parses them.
    max_atom_rows: int = 400
    #: pre-scan bound on rows x symmetry operators (the images pymatgen generates and merges; 9,600 take ~26 s). A row
    #: under n operators gives n / |site symmetry| sites, so a 200-atom cell stays below 3,200 unless its rows' mean
    #: site-symmetry order exceeds 16. Files with no operator loop count 1 operator.
    max_atom_images: int = 3200
    check_formula: bool = True  #: cross-check the parsed composition against _chemical_formula_sum / _moiety (formula_disagrees)


@dataclass
class Reject:
    dataset: str
    file: str
    row: int
    record_id: str
    reason: str
    detail: str = ""


@dataclass
class Canonical:
    text: str
    reduced_formula: str
    elements: list[str]
    n_sites: int
    n_prim_sites: int
    sg_number: int
    record: RawRecord
    round_trip: str | None = None  # None: not checked; "": ok; else a reason


def _min_distance(structure) -> float:
    n = len(structure)
    if n < 2:
        # a single atom: its nearest neighbour is its own periodic image
        return float(min(structure.lattice.abc))
    dm = structure.distance_matrix
    dm[np.diag_indices(n)] = np.inf
    return float(min(dm.min(), min(structure.lattice.abc)))


_CIF_TOKEN = re.compile(r"""'[^']*'|"[^"]*"|\S+""")


def _loops(text: str) -> list[tuple[int, list[str], int]]:
    """(data block index, tags, rows) of every ``loop_`` of a CIF text, without parsing values (linear time)."""
    lines = text.splitlines()
    n = len(lines)
    block = 0
    out: list[tuple[int, list[str], int]] = []
    i = 0
    while i < n:
        low = lines[i].strip().lower()
        if low.startswith("data_"):
            block += 1
            i += 1
            continue
        if not low.startswith("loop_"):
            i += 1
            continue
        i += 1
        tags: list[str] = []
        while i < n and lines[i].lstrip().startswith("_"):
            tags.append(lines[i].split()[0].lower())
            i += 1
        values = 0
        while i < n:
            raw = lines[i]
            st = raw.strip()
            if not st or st.startswith("#"):
                i += 1
                continue
            if st.startswith("_") or st.lower().startswith(("loop_", "data_", "save_", "global_")):
                break
            if raw.startswith(";"):  # a text field is one value
                values += 1
                i += 1
                while i < n and not lines[i].startswith(";"):
                    i += 1
                i += 1
                continue
            values += len(_CIF_TOKEN.findall(st))
            i += 1
        if tags:
            out.append((block, tags, -(-values // len(tags))))
    return out


def count_atom_site_rows(text: str) -> tuple[int, int]:
    """Atom-site rows of a CIF text without parsing it: (most rows in one data block, rows in all blocks).

    Each ``loop_`` with an ``_atom_site_*`` tag (not ``_atom_site_aniso_*``) contributes ceil(values / tags) rows.
    Linear in the length of the text.
    """
    per_block: dict[int, int] = {}
    for block, tags, rows in _loops(text):
        if any(t.startswith("_atom_site_") and not t.startswith("_atom_site_aniso") for t in tags):
            per_block[block] = per_block.get(block, 0) + rows
    return max(per_block.values(), default=0), sum(per_block.values())


def count_symmetry_operators(text: str) -> int:
    """Rows of the largest symmetry-operator loop (``_symmetry_equiv_pos_as_xyz`` / ``_space_group_symop_operation_xyz``);
    1 when there is none."""
    ops = [rows for _, tags, rows in _loops(text) if any(t in ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz") for t in tags)]
    return max(ops, default=1)


_FORMULA_TAG = re.compile(r"^[ \t]*(_chemical_formula_sum|_chemical_formula_moiety)(?:[ \t]+(.*))?$", re.MULTILINE | re.IGNORECASE)


def _tag_value(text: str, m: re.Match) -> str:
    value = (m.group(2) or "").strip()
    if not value:  # the value is on the next line(s): a plain/quoted line or a ;-delimited text field
        rest = text[m.end() :].lstrip("\r\n").splitlines()
        if rest and rest[0].startswith(";"):
            field = [rest[0][1:]]
            for ln in rest[1:]:
                if ln.startswith(";"):
                    break
                field.append(ln)
            value = " ".join(field).strip()
        elif rest:
            value = rest[0].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1].strip()
    return value


def stated_formula(text: str):
    """The composition the CIF states, read from the block :func:`cifllm.cif.io.read_cif_text` parses:
    ``_chemical_formula_sum``, else ``_chemical_formula_moiety`` (moieties summed); None when neither states one
    (missing, ``?``, ``.``). Raises :class:`~cifllm.cif.canonical.CIFError` ``formula_unparsable`` or
    ``formula_too_long`` (see :func:`cifllm.cif.formula.parse_stated_formula`)."""
    block = structure_block(text) or text
    found: dict[str, str] = {}
    for m in _FORMULA_TAG.finditer(block):
        found.setdefault(m.group(1).lower(), _tag_value(block, m))
    comp = parse_stated_formula(found.get("_chemical_formula_sum"))
    return comp if comp is not None else parse_stated_formula(found.get("_chemical_formula_moiety"))


_HYDROGEN = ("H", "D", "T")


def hydrogen_missing(stated: Any, parsed: Any) -> str | None:
    """Why the hydrogen rule drops a record (the stated formula has H but the sites give none), or None."""
    st = {el.symbol for el in stated.elements}
    pa = {el.symbol for el in parsed.elements}
    if st & set(_HYDROGEN) and not pa & set(_HYDROGEN):
        return f"stated {stated.formula} has hydrogen, the sites give none ({parsed.formula}): H not located or occupancy 0"
    return None


def formula_disagreement(stated: Any, parsed: Any, ordered: bool) -> str | None:
    """Why ``parsed`` (the sites' composition) disagrees with ``stated`` (the CIF's formula), or None (see the module
    docstring for the tolerance; missing hydrogen is :func:`hydrogen_missing`, checked first)."""
    st = {el.symbol: float(a) for el, a in stated.element_composition.items()}
    pa = {el.symbol: float(a) for el, a in parsed.element_composition.items()}
    if set(st) != set(pa) or not st:
        return f"stated {stated.formula} has elements {sorted(st)}, the sites give {sorted(pa)} ({parsed.formula})"
    z = sum(pa.values()) / sum(st.values())
    if ordered and all(abs(a - round(a)) < 1e-3 for a in st.values()):
        ratios = {el: pa[el] / st[el] for el in st}
        lo, hi = min(ratios.values()), max(ratios.values())
        if hi - lo > 1e-6 * hi:
            return f"stated {stated.formula}, the sites give {parsed.formula} (not a whole multiple)"
        return None
    for el, a in st.items():
        if abs(pa[el] / z - a) > 0.01 + 0.02 * a:
            return f"stated {stated.formula}, the sites give {parsed.formula} ({el}: {pa[el] / z:.3f} per formula unit vs {a:g})"
    return None


def _text_volume(abc: tuple[float, ...], angles: tuple[float, ...]) -> float:
    ca, cb, cg = (math.cos(math.radians(x)) for x in angles)
    v2 = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
    return abc[0] * abc[1] * abc[2] * math.sqrt(v2) if v2 > 0 else 0.0


def canonical_composition_change(structure: Any, text: str) -> tuple[str | None, int]:
    """(why the canonical ``text`` does not keep ``structure``'s composition or None, sites of the text's cell).

    Counts come from the sites re-derived from the text (multiplicity x occupancy per element); tolerances in the
    module docstring."""
    parsed = parse_canonical(text)
    _, species, _, _ = expand_sites(parsed)
    got: dict[str, float] = defaultdict(float)
    for sp in species:
        for el, occ in sp.items():
            got[el] += occ
    n_text = sum(got.values())
    orig = {el.symbol: float(a) for el, a in structure.composition.element_composition.items()}
    if set(orig) != {el for el, a in got.items() if a > 0}:
        return f"elements {sorted(orig)} became {sorted(got)}", len(species)
    n_orig = sum(orig.values())
    for el, a in orig.items():
        if abs(got[el] / n_text - a / n_orig) > 0.005 * a / n_orig:
            return f"{el}: fraction {a / n_orig:.4f} became {got[el] / n_text:.4f} ({format_formula(structure.composition)} -> {parsed.formula})", len(species)
    v_text = _text_volume(parsed.abc, parsed.angles)
    expected = n_orig * v_text / float(structure.volume)
    if not abs(n_text / expected - 1) <= 0.10:
        return f"the text's cell holds {n_text:g} atoms, its volume implies {expected:.1f} ({format_formula(structure.composition)} -> {parsed.formula})", len(species)
    return None, len(species)


def process_record(rec: RawRecord, cfg: FilterSettings) -> Canonical | Reject:
    """Parse, filter and canonicalize one record. Never raises for bad data: returns a :class:`Reject`."""
    def reject(reason: str, detail: str = "") -> Reject:
        return Reject(rec.dataset, rec.file, rec.row, rec.record_id, reason, detail[:300])

    if rec.extras.get("read_error"):
        return reject("read_error", str(rec.extras["read_error"]))
    if rec.structure is None and isinstance(rec.cif, str):
        most, total = count_atom_site_rows(rec.cif)
        if most > cfg.max_atom_rows or total > 10 * cfg.max_atom_rows:
            return reject("too_many_atoms", f"pre-scan: {most} atom-site rows in one data block ({total} in all) > {cfg.max_atom_rows}")
        ops = count_symmetry_operators(rec.cif)
        if most * ops > cfg.max_atom_images:
            return reject("too_many_atoms", f"pre-scan: {most} atom-site rows x {ops} symmetry operators > {cfg.max_atom_images}")
    try:
        if rec.structure is not None:
            s = structure_from_dict(rec.structure, rec.where)
        else:
            s = read_cif_text(rec.cif or "", rec.where)
    except CIFError as exc:
        return reject(exc.reason if exc.reason in ("empty", "not_cif", "too_large", "binary", "bad_occupancy") else "unparsable", exc.detail)
    except Exception as exc:  # defensive: a reader bug must not kill the run
        return reject("unparsable", f"{type(exc).__name__}: {exc}")
    if not s.is_ordered and not cfg.keep_partial:
        return reject("partial_occupancy", "disordered or partially occupied sites")
    if cfg.check_formula and rec.structure is None:
        try:
            stated = stated_formula(rec.cif or "")
        except CIFError as exc:
            return reject(exc.reason, exc.detail)
        if stated is not None:
            why = hydrogen_missing(stated, s.composition)
            if why:
                return reject("hydrogen_missing", why)
            why = formula_disagreement(stated, s.composition, s.is_ordered)
            if why:
                return reject("formula_disagrees", why)
    bad = sorted({el.symbol for el in s.composition.elements if getattr(el, "Z", 999) > cfg.max_z})
    if bad:
        return reject("unsupported_element", f"{bad} (Z > {cfg.max_z})")
    if len(s) > cfg.max_atoms:
        return reject("too_many_atoms", f"{len(s)} sites > {cfg.max_atoms}")
    vpa = s.volume / max(s.composition.num_atoms, 1e-9)
    if not (cfg.min_volume_per_atom <= vpa <= cfg.max_volume_per_atom):
        return reject("volume_per_atom", f"{vpa:.3f} A^3/atom outside [{cfg.min_volume_per_atom}, {cfg.max_volume_per_atom}]")
    dmin = _min_distance(s)
    if dmin < cfg.min_distance:
        return reject("min_distance", f"closest pair {dmin:.3f} A < {cfg.min_distance} A")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            text = structure_to_text(s, symprec=cfg.symprec, mode=cfg.mode)
    except CIFError as exc:
        return reject("symmetry_failed", str(exc))
    except Exception as exc:
        return reject("symmetry_failed", f"{type(exc).__name__}: {exc}")
    try:
        changed, n_sites = canonical_composition_change(s, text)
        parsed = parse_canonical(text)
    except CIFError as exc:
        return reject("canonical_composition_changed", f"the canonical text does not parse back: {exc}")
    if changed:
        return reject("canonical_composition_changed", changed)
    sg_number, sg_symbol = parsed.sg_number, parsed.sg_symbol
    comp = s.composition
    rt = None
    if cfg.verify_round_trip:
        rt = _round_trip_reason(s, text, cfg.symprec, cfg.mode)
    return Canonical(
        text=text,
        reduced_formula=format_formula(comp, reduced=True),
        elements=sorted(el.symbol for el in comp.elements),
        n_sites=n_sites,
        n_prim_sites=n_sites // CENTERING_FACTOR.get(sg_symbol[0], 1) if cfg.mode == "symmetrized" else n_sites,
        sg_number=sg_number,
        record=rec,
        round_trip=rt,
    )


_MATCHER: Any = None


def _round_trip_reason(structure, text: str, symprec: float, mode: str) -> str:
    """"" when ``text`` parses back to a match of ``structure``; else ``parse:<reason>``, ``no_match`` or
    ``symmetrization_changed_structure`` (see :func:`cifllm.cif.matching.round_trip`)."""
    global _MATCHER

    if _MATCHER is None:
        _MATCHER = make_matcher("roundtrip")
    rt = round_trip(structure, symprec=symprec, mode=mode, matcher=_MATCHER, text=text)
    if rt.ok:
        return ""
    return rt.reason if rt.reason in ("no_match", "symmetrization_changed_structure") else f"parse:{rt.reason}"
