"""Structure matching (pymatgen ``StructureMatcher``) with the tolerances the field uses, and the round-trip check."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from pymatgen.analysis.structure_matcher import AbstractComparator, StructureMatcher
from pymatgen.core import Structure

from cifllm.cif.canonical import CIFError, structure_to_text, text_to_structure

__all__ = ["OccupancyComparator", "RoundTrip", "make_matcher", "reduce_for_matching", "fit_reduced", "lattice_signature", "may_match", "round_trip", "MATCHER_SETTINGS"]

#: Named tolerance sets: ltol (fractional), stol (fraction of (V/n)^(1/3)), angle_tol (degrees).
MATCHER_SETTINGS: dict[str, dict[str, float]] = {
    # pymatgen defaults, with scale=False: used for round trips and deduplication
    "roundtrip": {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0},
    "dedup": {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0},
    # MatterGen's novelty/uniqueness setting
    "novelty": {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0},
    # DiffCSP / CrystaLLM CSP match
    "csp": {"ltol": 0.3, "stol": 0.5, "angle_tol": 10.0},
}


class OccupancyComparator(AbstractComparator):
    """Species comparator that treats site occupancies equal within ``tol`` (canonical text keeps 4 decimals)."""

    def __init__(self, tol: float = 1e-3) -> None:
        self.tol = tol

    def are_equal(self, sp1, sp2) -> bool:
        c1, c2 = sp1.element_composition, sp2.element_composition
        if set(c1) != set(c2):
            return False
        return all(abs(c1[e] - c2[e]) <= self.tol for e in c1)

    def get_hash(self, composition):
        return composition.reduced_formula if composition.is_element else tuple(sorted(e.symbol for e in composition))

    def as_dict(self) -> dict:
        return {"@module": type(self).__module__, "@class": type(self).__name__, "tol": self.tol}


def make_matcher(kind: str = "dedup", scale: bool | None = None, supercell: bool = False) -> StructureMatcher:
    """A ``StructureMatcher`` with one of :data:`MATCHER_SETTINGS`; ``scale`` defaults to False for round trips;
    ``supercell`` lets structures whose primitive cells differ in size match (one a supercell of the other, e.g. a
    distorted cell that relaxed back to a higher-symmetry one)."""
    try:
        tol = MATCHER_SETTINGS[kind]
    except KeyError:
        raise ValueError(f"unknown matcher setting {kind!r}; choose from {sorted(MATCHER_SETTINGS)}") from None
    if scale is None:
        scale = kind != "roundtrip"
    return StructureMatcher(**tol, scale=scale, attempt_supercell=supercell, comparator=OccupancyComparator())


def reduce_for_matching(sm: StructureMatcher, structure: Structure) -> Structure:
    """Primitive + Niggli reduction as ``sm`` would do it inside every ``fit``; do it once per structure when one
    structure is compared many times, then call :func:`fit_reduced`."""
    return sm._get_reduced_structure(structure, sm._primitive_cell, niggli=True)


def fit_reduced(sm: StructureMatcher, s1: Structure, s2: Structure) -> bool:
    """``sm.fit`` on structures already passed through :func:`reduce_for_matching`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(sm.fit(s1, s2, skip_structure_reduction=True))


def lattice_signature(reduced: Structure, scale: bool = True) -> tuple[float, float, float]:
    """Sorted Niggli lengths of a :func:`reduce_for_matching` structure, divided by V^(1/3) when ``scale``."""
    abc = sorted(reduced.lattice.abc)
    f = reduced.volume ** (1 / 3) if scale else 1.0
    return (abc[0] / f, abc[1] / f, abc[2] / f)


def may_match(sig1: tuple[float, ...], sig2: tuple[float, ...], ltol: float = 0.2, margin: float = 0.1) -> bool:
    """Cheap necessary condition for a ``StructureMatcher`` match: the successive minima of two matching lattices
    agree within the length tolerance (``margin`` added for safety). ``False`` means "cannot match"."""
    lim = 1.0 + ltol + margin
    return all(max(a / b, b / a) <= lim for a, b in zip(sig1, sig2))


@dataclass(frozen=True)
class RoundTrip:
    ok: bool
    reason: str = ""  # "" | parse error code | "no_match" | "symmetrization_changed_structure"
    text: str = ""


def round_trip(
    structure: Structure, symprec: float = 0.1, mode: str = "symmetrized", matcher: StructureMatcher | None = None, text: str | None = None
) -> RoundTrip:
    """structure -> canonical text -> structure; ``ok`` when the result matches the original (``roundtrip`` tolerances).
    Pass ``text`` when the structure was already serialized (with the same ``symprec``/``mode``)."""
    sm = matcher or make_matcher("roundtrip")
    try:
        if text is None:
            text = structure_to_text(structure, symprec=symprec, mode=mode)
        back = text_to_structure(text)
    except CIFError as exc:
        return RoundTrip(False, exc.reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sm.fit(structure, back):
            return RoundTrip(True, "", text)
        if mode == "symmetrized":
            # Is it our text, or the symmetrization itself (pymatgen's own refined cell does not match either)?
            from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

            try:
                refined = SpacegroupAnalyzer(structure, symprec=symprec).get_refined_structure()
                if not sm.fit(structure, refined):
                    return RoundTrip(False, "symmetrization_changed_structure", text)
            except Exception:
                pass
    return RoundTrip(False, "no_match", text)
