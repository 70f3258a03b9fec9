"""Wyckoff positions of the 230 space groups, in the setting canonical text v2 is written in.

Source: **pyxtal** (``pyxtal.symmetry.Group``), whose tables are the Bilbao Crystallographic Server's listing of the
International Tables (ITA) standard settings: origin choice 2 for the 24 groups with two origins, hexagonal axes
for the rhombohedral groups, unique axis b for monoclinic groups. We chose it because (i) spglib determines Wyckoff
*letters* but exposes no coordinate triplets, (ii) pymatgen ships no Wyckoff tables, and (iii) pyxtal's first
operation of every position is the ITA *first representative* (``x,0,0``, ``x,2x,z``, ...), which is what the text
writes. The table is generated from pyxtal (``python -m cifllm.cif.wyckoff``), shipped as package data
(``cifllm/resources/wyckoff.json``) so run time needs no pyxtal, and a test regenerates it and compares.

Every first representative is an affine *projection* ``p -> R p + t`` (``R R = R``, ``R t = 0 mod 1``), and along
the coordinates x, y, z each parameter first appears alone with coefficient +-1 (checked by the generator). So a
coordinate is either a constant, *free* (it introduces a parameter: the text's number is sampled) or *tied*
(computed from parameters already written). :func:`coordinate_plan` gives that per coordinate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, lru_cache
from importlib import resources

import numpy as np

__all__ = [
    "WyckoffPosition",
    "coordinate_plan",
    "hall_number_v2",
    "letter_index",
    "space_group_wyckoff",
    "wyckoff_coords",
    "build_table",
]

TABLE_RESOURCE = "wyckoff.json"
#: Letter order: a..z then A (the 27th position of Pmmm, written alpha in ITA).
LETTERS = "abcdefghijklmnopqrstuvwxyzA"


def letter_index(letter: str) -> int:
    return LETTERS.index(letter)


@dataclass(frozen=True)
class WyckoffPosition:
    """One Wyckoff position: ``letter``, ``multiplicity`` (conventional cell) and its first representative
    ``coords = R @ (x, y, z) + t`` (``rot`` integer 3x3, ``trans`` fractions)."""

    letter: str
    multiplicity: int
    rot: tuple[tuple[int, int, int], ...]
    trans: tuple[float, float, float]

    @cached_property
    def dof(self) -> int:
        """Number of free parameters (0: a fixed point, usable by one orbit only)."""
        return int(np.linalg.matrix_rank(np.asarray(self.rot, dtype=float)))

    def project(self, frac: np.ndarray) -> np.ndarray:
        """``R p + t`` for fractional ``p`` (the nearest point of the first-representative form, for a ``p`` near it)."""
        return np.asarray(self.rot, dtype=float) @ np.asarray(frac, dtype=float) + np.asarray(self.trans)


def build_table() -> dict[str, dict]:
    """The table from pyxtal (needs ``pip install pyxtal``): ``{number: {"hall": int, "positions": [...]}}``."""
    from pyxtal.symmetry import Group  # generator only: run time reads the shipped JSON

    out: dict[str, dict] = {}
    for n in range(1, 231):
        g = Group(n)
        positions = []
        for wp in sorted(g.Wyckoff_positions, key=lambda w: letter_index(w.letter)):
            op = wp.ops[0]
            rot = np.round(op.rotation_matrix).astype(int)
            trans = np.mod(op.translation_vector, 1.0)
            if not np.array_equal(rot @ rot, rot):
                raise ValueError(f"group {n} {wp.letter}: first representative is not a projection")
            positions.append(
                {
                    "letter": wp.letter,
                    "multiplicity": int(wp.multiplicity),
                    "rot": rot.tolist(),
                    "trans": [str(Fraction(float(x)).limit_denominator(48)) for x in trans],
                }
            )
        out[str(n)] = {"hall": int(g.hall_number), "positions": positions}
    return out


@lru_cache(maxsize=1)
def _table() -> dict[int, tuple[int, tuple[WyckoffPosition, ...]]]:
    raw = json.loads(resources.files("cifllm").joinpath("resources", TABLE_RESOURCE).read_text())
    table = {}
    for k, v in raw.items():
        pos = tuple(
            WyckoffPosition(
                p["letter"],
                int(p["multiplicity"]),
                tuple(tuple(int(x) for x in r) for r in p["rot"]),  # type: ignore[misc]
                tuple(float(Fraction(x)) for x in p["trans"]),  # type: ignore[arg-type]
            )
            for p in v["positions"]
        )
        table[int(k)] = (int(v["hall"]), pos)
    return table


def hall_number_v2(number: int) -> int:
    """spglib Hall number of the ITA standard setting of space group ``number`` (the setting of v2 text)."""
    return _table()[number][0]


def space_group_wyckoff(number: int) -> tuple[WyckoffPosition, ...]:
    """The Wyckoff positions of space group ``number`` (1-230), in letter order a, b, c, ..."""
    return _table()[number][1]


@lru_cache(maxsize=4096)
def coordinate_plan(number: int, letter: str) -> tuple[tuple[str, tuple[int, int, int], float, int], ...]:
    """Per coordinate (x, y, z): ``(kind, coefficients, constant, param)``.

    ``kind`` is ``"const"`` (value = constant), ``"free"`` (this coordinate introduces parameter ``param``:
    value = sign * param + constant, sign = coefficients[param]) or ``"tied"`` (value from parameters already
    introduced). Value of any coordinate = coefficients . (x, y, z) + constant (mod 1).
    """
    wp = next((w for w in space_group_wyckoff(number) if w.letter == letter), None)
    if wp is None:
        raise KeyError(f"space group {number} has no Wyckoff position {letter!r}")
    known: set[int] = set()
    plan = []
    for i in range(3):
        coef = wp.rot[i]
        new = [j for j in range(3) if coef[j] != 0 and j not in known]
        if not any(coef):
            plan.append(("const", coef, wp.trans[i], -1))
        elif new:
            plan.append(("free", coef, wp.trans[i], new[0]))
        else:
            plan.append(("tied", coef, wp.trans[i], -1))
        known.update(j for j in range(3) if coef[j] != 0)
    return tuple(plan)


def _round_wrap(x: float, decimals: int = 4) -> float:
    """Wrap into [0, 1) after rounding to ``decimals`` (0.99999 -> 0.0), as canonical text writes coordinates."""
    y = round(x % 1.0, decimals) % 1.0
    if math.isclose(y, 1.0, abs_tol=10 ** -(decimals + 1)):
        y = 0.0
    return y + 0.0


def wyckoff_coords(number: int, letter: str, written: dict[int, float], decimals: int = 4) -> tuple[float | None, ...]:
    """Coordinates of a row as far as they are determined.

    ``written`` maps coordinate index -> the (rounded) number written for each *free* coordinate so far. Returns,
    per coordinate, the value canonical text writes (rounded, wrapped into [0, 1)), or None when it depends on a
    free coordinate not written yet. Writer and constraint engine both use this, so they agree digit for digit.
    """
    plan = coordinate_plan(number, letter)
    params: dict[int, float] = {}
    out: list[float | None] = []
    for i, (kind, coef, const, param) in enumerate(plan):
        if kind == "free":
            if i not in written:
                out.append(None)
                # later coordinates that need this parameter stay undetermined
                continue
            sign = coef[param]
            others = sum(coef[j] * params[j] for j in range(3) if coef[j] != 0 and j != param)
            params[param] = sign * (written[i] - const - others)
            out.append(_round_wrap(written[i], decimals))
            continue
        needed = [j for j in range(3) if coef[j] != 0]
        if any(j not in params for j in needed):
            out.append(None)
            continue
        out.append(_round_wrap(sum(coef[j] * params[j] for j in needed) + const, decimals))
    return tuple(out)


if __name__ == "__main__":  # regenerate the shipped table from pyxtal
    import sys
    from pathlib import Path

    target = Path(str(resources.files("cifllm").joinpath("resources", TABLE_RESOURCE)))  # the packaged file
    target.write_text(json.dumps(build_table(), separators=(",", ":")) + "\n")
    print(f"wrote {target}", file=sys.stderr)
