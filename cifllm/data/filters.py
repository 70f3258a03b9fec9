"""Per-record processing: parse, filter (each drop has a named reason), canonicalize. Pure functions of one record.

Reasons (stable codes used in reports): ``read_error``, ``unparsable``, ``empty``, ``not_cif``, ``too_large``,
``binary``, ``partial_occupancy``, ``unsupported_element``, ``too_many_atoms``, ``min_distance``, ``volume_per_atom``,
``symmetry_failed``, ``too_many_tokens`` (applied later, after tokenization).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifllm.cif import CIFError, format_formula, structure_to_text
from cifllm.cif.io import read_cif_text, structure_from_dict
from cifllm.data.readers import RawRecord

__all__ = ["FilterSettings", "Canonical", "Reject", "process_record", "CENTERING_FACTOR"]

#: Lattice points per conventional cell by the first letter of the H-M symbol (R: hexagonal setting).
CENTERING_FACTOR = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 3}


@dataclass(frozen=True)
class FilterSettings:
    """Thresholds: distances in Angstrom, volumes in Angstrom^3 per atom, atoms counted in the input cell."""

    symprec: float = 0.1
    mode: str = "symmetrized"
    keep_partial: bool = False
    max_atoms: int = 200
    max_z: int = 94
    min_distance: float = 0.5
    min_volume_per_atom: float = 1.5
    max_volume_per_atom: float = 250.0
    verify_round_trip: bool = False


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


def process_record(rec: RawRecord, cfg: FilterSettings) -> Canonical | Reject:
    """Parse, filter and canonicalize one record. Never raises for bad data: returns a :class:`Reject`."""

    def reject(reason: str, detail: str = "") -> Reject:
        return Reject(rec.dataset, rec.file, rec.row, rec.record_id, reason, detail[:300])

    if rec.extras.get("read_error"):
        return reject("read_error", str(rec.extras["read_error"]))
    try:
        if rec.structure is not None:
            s = structure_from_dict(rec.structure, rec.where)
        else:
            s = read_cif_text(rec.cif or "", rec.where)
    except CIFError as exc:
        return reject(exc.reason if exc.reason in ("empty", "not_cif", "too_large", "binary") else "unparsable", exc.detail)
    except Exception as exc:  # defensive: a reader bug must not kill the run
        return reject("unparsable", f"{type(exc).__name__}: {exc}")
    if not s.is_ordered and not cfg.keep_partial:
        return reject("partial_occupancy", "disordered or partially occupied sites")
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
    lines = text.split("\n", 3)
    sg_number = int(lines[2].split()[1])
    sg_symbol = lines[1].split()[1]
    n_sites = 0
    for ln in text.split("loop_\n", 1)[1].splitlines()[7:]:
        n_sites += int(ln.split()[2])
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
    from cifllm.cif.matching import make_matcher, round_trip

    if _MATCHER is None:
        _MATCHER = make_matcher("roundtrip")
    rt = round_trip(structure, symprec=symprec, mode=mode, matcher=_MATCHER, text=text)
    if rt.ok:
        return ""
    return rt.reason if rt.reason in ("no_match", "symmetrization_changed_structure") else f"parse:{rt.reason}"
