"""Seeded, deterministic fuzzing of every path that reads untrusted input: data preparation (one record),
``check_sample``, ``cifllm evaluate`` on a garbage ``samples.jsonl``, every CLI reader of a user's JSON / YAML / text
file on damaged files (deep nesting, a folder, binary, bad syntax: :func:`fuzz_input_files`), and the tokenizer.

A mutation generator (:data:`MUTATORS`) damages real-looking CIFs: truncation, byte flips, line deletions, duplicated
tags, huge / NaN / negative / zero numbers, degenerate angles, unknown elements, absurd row counts, binary, empty,
non-UTF-8, partial and tiny occupancies; and the classes of issue 31: formulas with groups, brackets and hydrate dots
(sometimes with a damaged site list), several data blocks of one name holding different compounds, hydrogen stated
but unlocated or at occupancy 0, ~1,000-site P1 texts (bond check), megabyte ``data_`` lines and formulas, 400-999
Angstrom cells (neighbour-list memory), occupancies just above 1. :func:`deeply_nested` writes JSON/YAML nested
thousands deep, and :func:`fuzz_input_files` feeds such files (and other damaged ones) to every CLI stage that reads one. Each driver returns a :class:`FuzzReport`: inputs tried, crashes (an
exception escaped, or a check reported ``check_crashed``), hangs (an input over ``hang_s`` seconds), outcomes without a
reason, outcomes by reason and mutator, and the slowest input. Used by ``tests/test_fuzz.py`` and
``benchmarks/bench_fuzz.py``; the drivers go through the public functions only (``process_record``,
``structure_to_text``, ``check_sample``, ``cifllm.cli.main``, the tokenizer), never a fixed row layout.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import random
import re
import resource
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifllm.cif import CIFError, structure_to_text
from cifllm.cif.formula import parse_stated_formula
from cifllm.cli import main
from cifllm.core.records import EVAL_DIR, METRICS_FILE, SAMPLES_FILE
from cifllm.data.filters import FilterSettings, Reject, formula_disagreement, process_record, stated_formula
from cifllm.data.readers import RawRecord
from cifllm.evaluation.checks import check_sample
from cifllm.tokenization import build_tokenizer
from cifllm.utils.limits import map_with_time_limit

__all__ = [
    "FuzzReport",
    "ISSUE31_MUTATORS",
    "MUTATORS",
    "TOKENIZER_SKIPS",
    "seed_structures",
    "seed_cifs",
    "mutate",
    "deeply_nested",
    "fuzz_prep",
    "fuzz_checks",
    "fuzz_evaluate",
    "fuzz_input_files",
    "fuzz_tokenizer",
    "peak_rss_mb",
]

_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?\d+\.?\d*(?:[eE][-+]?\d+)?")


@dataclass
class FuzzReport:
    """Outcome counts of one fuzzed path. ``crashes``/``hangs``/``no_reason`` list (mutator, seed, detail)."""

    path: str
    tried: int = 0
    crashes: list[list[str]] = field(default_factory=list)
    hangs: list[list[str]] = field(default_factory=list)
    no_reason: list[list[str]] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)
    by_mutator: Counter = field(default_factory=Counter)
    max_seconds: float = 0.0
    slowest: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def note(self, mutator: str, seed: str, outcome: str, seconds: float, hang_s: float) -> None:
        self.tried += 1
        self.outcomes[outcome] += 1
        self.by_mutator[mutator] += 1
        if seconds > self.max_seconds:
            self.max_seconds, self.slowest = seconds, f"{mutator} on {seed}"
        if seconds > hang_s:
            self.hangs.append([mutator, seed, f"{seconds:.1f} s"])

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "inputs": self.tried,
            "crashes": len(self.crashes),
            "hangs": len(self.hangs),
            "no_reason": len(self.no_reason),
            "crash_examples": self.crashes[:10],
            "hang_examples": self.hangs[:10],
            "no_reason_examples": self.no_reason[:10],
            "outcomes": dict(self.outcomes.most_common()),
            "inputs_by_mutator": dict(sorted(self.by_mutator.items())),
            "max_seconds_per_input": round(self.max_seconds, 3),
            "slowest_input": self.slowest,
            "seconds": round(self.seconds, 2),
            **self.extra,
        }


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory (MB) of this process and of its finished child processes (Linux ``ru_maxrss``, kB)."""
    return {
        "self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


# ------------------------------------------------------------------------------------------------ seeds


def seed_structures() -> list[tuple[str, Any]]:
    """Named seed crystals: ordered binaries/ternaries of several symmetries, a 13-atom intermetallic, a disordered
    alloy and a hydrate-like hydrogen compound (lattice constants roughly physical, Angstrom)."""
    from pymatgen.core import Lattice, Structure

    s = [
        ("NaCl", Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])),
        ("SrTiO3", Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])),
        ("TiO2", Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]])),
        ("ZnO", Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])),
        (
            "SmMn6Sn6",
            Structure.from_spacegroup(
                "P6/mmm", Lattice.hexagonal(5.53, 9.02), ["Sm", "Mn", "Sn", "Sn", "Sn"], [[0, 0, 0], [0.5, 0, 0.246], [1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.5], [0, 0, 0.338]]
            ),
        ),
        ("CuAu", Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.85), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])),
        ("LiOH", Structure.from_spacegroup("P4/nmm", Lattice.tetragonal(3.55, 4.33), ["Li", "O", "H"], [[0.75, 0.25, 0], [0.25, 0.25, 0.194], [0.25, 0.25, 0.40]])),
    ]
    return s


def seed_cifs() -> list[tuple[str, str]]:
    """Seed CIF files as a user would bring them: pymatgen P1 CIFs, symmetrized CIFs with operators, and two
    experimental-style CIFs (``_chemical_formula_sum`` per formula unit): LiOH with its H unlocated (dropped by the
    hydrogen rule) and SrTiO3 as a mineral database writes it (``data_global``, formula ``'Sr (Ti O3)'``)."""
    from pymatgen.io.cif import CifWriter

    out = []
    for name, s in seed_structures():
        out.append((f"{name}-p1", str(CifWriter(s))))
        out.append((f"{name}-sym", str(CifWriter(s, symprec=0.1))))
    out.append(
        (
            "LiOH-exp",
            "data_LiOH\n_chemical_formula_sum 'H Li O'\n_cell_length_a 3.549\n_cell_length_b 3.549\n_cell_length_c 4.334\n"
            "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 4/n m m'\n"
            "_symmetry_Int_Tables_number 129\nloop_\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
            "_atom_site_occupancy\nLi1 0.75 0.25 0 1\nO1 0.25 0.25 0.194 1\n",  # H unlocated, as in many X-ray structures
        )
    )
    srtio3 = dict(seed_structures())["SrTiO3"]
    exp = str(CifWriter(srtio3, symprec=0.1)).replace("data_SrTiO3", "data_global")
    exp = re.sub(r"_chemical_formula_sum\s+'[^']*'", "_chemical_formula_sum   'Sr (Ti O3)'", exp)
    out.append(("SrTiO3-exp", exp))  # mineral-database style: data_global, a bracketed formula per formula unit
    return out


# ------------------------------------------------------------------------------------------------ mutators


def _lines(t: str) -> list[str]:
    return t.splitlines()


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _sub_number(t: str, rng: random.Random, value: str) -> str:
    spots = list(_NUMBER.finditer(t))
    if not spots:
        return t + value
    m = rng.choice(spots)
    return t[: m.start()] + value + t[m.end() :]


def _tag_lines(t: str) -> list[int]:
    return [k for k, ln in enumerate(_lines(t)) if ln.strip().startswith("_")]


def _row_lines(t: str) -> list[int]:
    """Data rows of loops (lines after a loop's tags that are not tags, keywords or comments)."""
    lines, rows, in_loop = _lines(t), [], False
    for k, ln in enumerate(lines):
        s = ln.strip()
        if s.lower().startswith("loop_"):
            in_loop = True
        elif s.startswith("_"):
            continue
        elif in_loop and s and not s.startswith(("#", ";")) and not s.lower().startswith("data_"):
            rows.append(k)
    return rows


def _atom_rows(t: str) -> list[int]:
    rows = _row_lines(t)
    return [k for k in rows if len(_lines(t)[k].split()) >= 4 and not _lines(t)[k].strip().startswith("'")] or rows


def _set_last_field(t: str, rng: random.Random, value: Callable[[random.Random], str], all_rows: bool) -> str:
    lines = _lines(t)
    rows = _atom_rows(t)
    if not rows:
        return t
    for k in rows if all_rows else [rng.choice(rows)]:
        parts = lines[k].split()
        lines[k] = " ".join([*parts[:-1], value(rng)])
    return _join(lines)


def _truncate(t: str, rng: random.Random) -> str:
    return t[: rng.randrange(len(t) + 1)]


def _byte_flip(t: str, rng: random.Random) -> str:
    b = bytearray(t.encode("utf-8", errors="replace"))
    for _ in range(rng.randint(1, 8)):
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    return b.decode("utf-8", errors="replace")


def _delete_lines(t: str, rng: random.Random) -> str:
    lines = _lines(t)
    for _ in range(rng.randint(1, 3)):
        if lines:
            del lines[rng.randrange(len(lines))]
    return _join(lines)


def _duplicate_tag(t: str, rng: random.Random) -> str:
    lines, tags = _lines(t), _tag_lines(t)
    if len(tags) < 2:
        return t
    a, b = rng.sample(tags, 2)
    if rng.random() < 0.5:
        lines.insert(a + 1, lines[a])  # the tag twice
    else:
        lines[b] = lines[a]  # another tag replaced by a copy
    return _join(lines)


def _huge(t: str, rng: random.Random) -> str:
    return _sub_number(t, rng, rng.choice(["1e300", "1e999", "123456789012345678901234567890", "9" * 400]))


def _nan(t: str, rng: random.Random) -> str:
    return _sub_number(t, rng, rng.choice(["nan", "NaN", "inf", "-inf", "?", "."]))


def _negative(t: str, rng: random.Random) -> str:
    spots = list(_NUMBER.finditer(t))
    if not spots:
        return t
    m = rng.choice(spots)
    return t[: m.start()] + "-" + m.group().lstrip("+-") + t[m.end() :]


def _zero(t: str, rng: random.Random) -> str:
    return _sub_number(t, rng, rng.choice(["0", "0.0", "0.0000", "1e-30"]))


def _degenerate_angles(t: str, rng: random.Random) -> str:
    choice = rng.choice([("120", "120", "120"), ("120", "120", "119.99"), ("0", "0", "0"), ("180", "90", "90"), ("60", "60", "179.9"), ("1", "1", "1"), ("90", "90", "0.001")])
    lines = _lines(t)
    for k, ln in enumerate(lines):
        for tag, v in zip(("alpha", "beta", "gamma"), choice, strict=True):
            if ln.strip().startswith(f"_cell_angle_{tag}"):
                lines[k] = f"_cell_angle_{tag} {v}"
    return _join(lines)


def _unknown_element(t: str, rng: random.Random) -> str:
    lines, rows = _lines(t), _atom_rows(t)
    if not rows:
        return t
    k = rng.choice(rows)
    parts = lines[k].split()
    new = rng.choice(["Xx", "Qq", "Uuo", "D", "Og", "Ts", "X", "1", "Na+", "Cl-"])
    lines[k] = " ".join([new if re.fullmatch(r"[A-Z][a-z]?", p) else p for p in parts[:1]] + parts[1:]) if parts else lines[k]
    return _join(lines)


def _absurd_rows(t: str, rng: random.Random) -> str:
    lines, rows = _lines(t), _atom_rows(t)
    if not rows:
        return t
    n = rng.choice([300, 2000, 20000])
    src = lines[rows[-1]].split()
    extra = []
    for i in range(n):
        parts = list(src)
        nums = [j for j, p in enumerate(parts) if _NUMBER.fullmatch(p)]
        for j in nums[-4:-1] if len(nums) >= 4 else nums:
            parts[j] = f"{rng.random():.5f}"
        if len(parts) > 1 and not _NUMBER.fullmatch(parts[1]):
            parts[1] = f"{parts[1]}x{i}"
        extra.append(" ".join(parts))
    return _join(lines[: rows[-1] + 1] + extra + lines[rows[-1] + 1 :])


def _binary(t: str, rng: random.Random) -> str:
    pos = rng.randrange(len(t) + 1)
    return t[:pos] + "\x00" * rng.randint(1, 16) + "".join(chr(rng.randrange(1, 32)) for _ in range(8)) + t[pos:]


def _empty(t: str, rng: random.Random) -> str:
    return rng.choice(["", " ", "\n\n", "data_\n", "loop_\n"])


def _non_utf8(t: str, rng: random.Random) -> str:
    b = t.encode()
    pos = rng.randrange(len(b) + 1)
    bad = bytes(rng.choice([0xFF, 0xFE, 0xC3, 0x80, 0xE9]) for _ in range(rng.randint(1, 6)))
    return (b[:pos] + bad + b[pos:]).decode("utf-8", errors="replace")  # what the readers do with such bytes


def _partial_occupancy(t: str, rng: random.Random) -> str:
    return _set_last_field(t, rng, lambda r: f"{r.uniform(0.05, 0.95):.3f}", all_rows=rng.random() < 0.5)


def _tiny_occupancy(t: str, rng: random.Random) -> str:
    return _set_last_field(t, rng, lambda r: r.choice(["1e-30", "0.0001", "1e-5", "0.00001", "0"]), all_rows=rng.random() < 0.5)



# ---- the classes of issue 31 (items 1-7)

_FORMULA_LINE = re.compile(r"^(_chemical_formula_sum[ \t]+)(.*)$", re.MULTILINE)


def _formula_of(t: str) -> tuple[str, dict[str, float]] | None:
    """("sum" or "data", {element: amount}) of the formula a text states, or None."""
    m = _FORMULA_LINE.search(t)
    value = m.group(2) if m else (t.split("\n", 1)[0][5:] if t.startswith("data_") else "")
    try:
        comp = parse_stated_formula(value)
    except CIFError:
        return None
    if comp is None:
        return None
    return ("sum" if m else "data"), {el.symbol: float(a) for el, a in comp.element_composition.items()}


def _set_formula(t: str, where: str, value: str) -> str:
    if where == "sum":
        m = _FORMULA_LINE.search(t)
        assert m is not None
        return t[: m.start(2)] + value + t[m.end(2) :]
    first, _, rest = t.partition("\n")
    return f"data_{value}\n{rest}"


def _amount(a: float) -> str:
    return "" if a == 1 else (str(int(a)) if a == int(a) else f"{a:g}")


def _bracket_formula(t: str, rng: random.Random) -> str:
    """The stated formula rewritten with a bracketed group, a hydrate dot or a group count (same composition); half
    the time one atom row is also deleted or relabelled, the damage the formula cross-check must then catch."""
    found = _formula_of(t)
    if found is None:
        return t
    where, amounts = found
    els = list(amounts)
    k = rng.randrange(len(els))
    head, group = els[:k], els[k:]
    style = rng.choice(["paren", "bracket", "count", "hydrate", "unknown_ratio"])
    if style == "unknown_ratio" and len(els) >= 2:  # a substitution of unknown ratio: formula_unparsable
        value = f"({els[0]},{els[1]})" + " ".join(f"{e}{_amount(amounts[e])}" for e in els[2:])
    elif style == "count" and len(group) >= 1:
        g = math.gcd(*[int(amounts[e]) for e in group]) if all(amounts[e] == int(amounts[e]) for e in group) else 1
        value = " ".join(f"{e}{_amount(amounts[e])}" for e in head) + f" ({' '.join(f'{e}{_amount(amounts[e] / g)}' for e in group)}){_amount(g)}"
    elif style == "hydrate":
        value = " ".join(f"{e}{_amount(a)}" for e, a in amounts.items()) + " . 2 H2 O"  # states water the sites lack
    else:
        o, c = ("(", ")") if style == "paren" else ("[", "]")
        value = " ".join(f"{e}{_amount(amounts[e])}" for e in head) + f" {o}{' '.join(f'{e}{_amount(amounts[e])}' for e in group)}{c}"
    out = _set_formula(t, where, f"'{value.strip()}'" if where == "sum" else value.replace(" ", ""))
    if rng.random() < 0.5:
        lines, rows = _lines(out), _atom_rows(out)
        if rows:
            k = rng.choice(rows)
            if rng.random() < 0.5:
                del lines[k]
            else:
                parts = lines[k].split()
                swap = {"Na": "K", "Cl": "Br", "Sr": "Ba", "Ti": "Zr", "O": "S", "Li": "Na", "H": "F", "Zn": "Cd", "Sm": "Nd", "Mn": "Fe", "Sn": "Pb", "Cu": "Ag", "Au": "Pt"}
                lines[k] = " ".join(swap.get(p, p) for p in parts)
            out = _join(lines)
    return out


@functools.lru_cache(maxsize=1)
def _other_blocks() -> tuple[str, ...]:
    return tuple(t for _, t in seed_cifs())


def _duplicate_block(t: str, rng: random.Random) -> str:
    """A second data block with the first block's name but another compound (``data_global`` style), after or
    before the first: the record must be the first block's compound or be dropped."""
    name = t.split("\n", 1)[0] if t.startswith("data_") else next((ln for ln in _lines(t) if ln.startswith("data_")), "data_global")
    others = [o for o in _other_blocks() if o.strip() != t.strip()]
    other = rng.choice(others)
    other = re.sub(r"^data_\S*", name, other[other.find("data_") :] if "data_" in other else other, count=1, flags=re.MULTILINE)
    return t.rstrip("\n") + "\n\n" + other if rng.random() < 0.8 else other.rstrip("\n") + "\n\n" + t


def _hydrogen_unlocated(t: str, rng: random.Random) -> str:
    """Stated hydrogen without hydrogen sites: H rows set to occupancy 0 or deleted (a hydride as the bare metal), or
    H added to a stated formula whose sites have none (a hydrous mineral without its H)."""
    lines, rows = _lines(t), _atom_rows(t)
    h_rows = [k for k in rows if lines[k].split()[:1] in (["H"], ["H1"], ["H0"]) or re.match(r"^\s*H\d*\s", lines[k])]
    if h_rows and rng.random() < 0.7:
        if rng.random() < 0.5:
            for k in h_rows:
                lines[k] = " ".join([*lines[k].split()[:-1], rng.choice(["0", "0.0", "0.000"])])
        else:
            lines = [ln for k, ln in enumerate(lines) if k not in set(h_rows)]
        return _join(lines)
    found = _formula_of(t)
    if found is None:
        return t
    where, amounts = found
    amounts["H"] = amounts.get("H", 0.0) + rng.choice([1.0, 2.0, 4.0])
    value = " ".join(f"{e}{_amount(a)}" for e, a in amounts.items())
    return _set_formula(t, where, f"'{value}'" if where == "sum" else value.replace(" ", ""))


def _huge_p1(t: str, rng: random.Random) -> str:
    """A P1 text of ~1,000 symmetry-unique sites (jittered rock-salt grid, ~15 Angstrom^3 per atom) of the text's
    elements: canonical text when the input is canonical, else a pymatgen CIF."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    els = [e for e in dict.fromkeys(re.findall(r"^\s*([A-Z][a-z]?)\s", "\n".join(_lines(t)[k] for k in _atom_rows(t)), re.MULTILINE)) if e != "X"][:2] or ["Na", "Cl"]
    n = rng.choice([8, 9, 10])
    frac = [((i + 0.5 + rng.uniform(-0.12, 0.12)) / n, (j + 0.5 + rng.uniform(-0.12, 0.12)) / n, (k + 0.5 + rng.uniform(-0.12, 0.12)) / n) for i in range(n) for j in range(n) for k in range(n)]
    species = [els[(i + j + k) % len(els)] for i in range(n) for j in range(n) for k in range(n)]
    try:
        s = Structure(Lattice.cubic(2.5 * n), species, frac)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            canonical = "_atom_site_symmetry_multiplicity" in t and "_symmetry_equiv_pos" not in t
            return structure_to_text(s, mode="p1") if canonical else str(CifWriter(s))
    except Exception:  # an element pymatgen cannot place: the input unchanged
        return t


def _huge_formula(t: str, rng: random.Random) -> str:
    """The ``data_`` line or ``_chemical_formula_sum`` replaced by a formula of 0.1-1.6 MB."""
    unit = rng.choice(["Na1Cl1", "H2O1", "Si1O2"])
    value = unit * (rng.choice([20_000, 100_000, 270_000]) // len(unit) * 6)
    m = _FORMULA_LINE.search(t)
    if m:
        return t[: m.start(2)] + "'" + " ".join(re.findall(r"[A-Z][a-z]?\d*", value)) + "'" + t[m.end(2) :]
    first, _, rest = t.partition("\n")
    return f"data_{value}\n{rest}" if first.startswith("data_") else f"data_{value}\n{t}"


def _huge_cell(t: str, rng: random.Random) -> str:
    """Cell lengths of 400-999 Angstrom (one, two or all three axes): the neighbour search must stay bounded."""
    lines = _lines(t)
    axes = rng.choice([("a",), ("a", "b"), ("a", "b", "c")])
    value = rng.choice(["400.0000", "640.5000", "999.0000", "999.9999"])
    for k, ln in enumerate(lines):
        for ax in axes:
            if ln.strip().startswith(f"_cell_length_{ax}"):
                lines[k] = f"_cell_length_{ax} {value}"
    return _join(lines)


def _occupancy_above_one(t: str, rng: random.Random) -> str:
    """Occupancies just above 1: float noise, within the tolerance, at it and just beyond it."""
    value = rng.choice(["1.0000000000000002", "1.0001", "1.001", "1.005", "1.01", "1.0100001", "1.02", "1.5"])
    return _set_last_field(t, rng, lambda r: value, all_rows=rng.random() < 0.5)


#: name -> mutation(text, rng) -> damaged text
MUTATORS: dict[str, Callable[[str, random.Random], str]] = {
    "truncate": _truncate,
    "byte_flip": _byte_flip,
    "delete_lines": _delete_lines,
    "duplicate_tag": _duplicate_tag,
    "huge_number": _huge,
    "nan_number": _nan,
    "negative_number": _negative,
    "zero_number": _zero,
    "degenerate_angles": _degenerate_angles,
    "unknown_element": _unknown_element,
    "absurd_rows": _absurd_rows,
    "binary": _binary,
    "empty": _empty,
    "non_utf8": _non_utf8,
    "partial_occupancy": _partial_occupancy,
    "tiny_occupancy": _tiny_occupancy,
    "bracket_formula": _bracket_formula,
    "duplicate_block": _duplicate_block,
    "hydrogen_unlocated": _hydrogen_unlocated,
    "huge_p1": _huge_p1,
    "huge_formula": _huge_formula,
    "huge_cell": _huge_cell,
    "occupancy_above_one": _occupancy_above_one,
}


#: Mutators left out of the tokenizer fuzz: a megabyte text only measures the tokenizer's linear speed (~5 us a byte).
TOKENIZER_SKIPS = ("huge_formula",)


#: The mutators of the input classes of issue 31 (items 1-7), for a fuzz run aimed at them.
ISSUE31_MUTATORS = ("bracket_formula", "duplicate_block", "hydrogen_unlocated", "huge_p1", "huge_formula", "huge_cell", "occupancy_above_one")


def mutate(text: str, rng: random.Random, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> tuple[str, str]:
    """(mutator name, damaged text); 1 in 4 inputs get two mutations (the name joins both). ``skip``: mutators not
    drawn; ``only``: the first mutation is drawn from these (the second from all)."""
    names = sorted(set(MUTATORS) - set(skip))
    first = sorted(set(only) - set(skip)) if only else names
    name = rng.choice(first)
    out = MUTATORS[name](text, rng)
    if rng.random() < 0.25:
        second = rng.choice(names)
        out, name = MUTATORS[second](out, rng), f"{name}+{second}"
    return name, out


def _cases(seeds: list[tuple[str, str]], n: int, seed: int, only: tuple[str, ...] | None = None) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        sname, text = seeds[i % len(seeds)]
        mname, damaged = mutate(text, rng, only=(only[i % len(only)],) if only else None)  # ``only``: each in turn
        cases.append((mname, sname, damaged))
    return cases


# ------------------------------------------------------------------------------------------------ drivers


def fuzz_prep(n: int = 200, seed: int = 0, hang_s: float = 10.0, time_limit_s: float = 30.0, only: tuple[str, ...] | None = None) -> FuzzReport:
    """(a) The per-record preparation path (:func:`cifllm.data.filters.process_record`) under the prep time limit.

    Outcome ``kept`` or the reject reason. Also counted: ``silent_corruption`` - a kept record whose composition
    differs from the ``_chemical_formula_sum`` of its file's first structure block (hydrogen included: the hydrogen
    rule drops records without their H), or whose stated formula could not be read. ``only``: the first mutation of
    input i is ``only[i % len(only)]`` (e.g. :data:`ISSUE31_MUTATORS`)."""
    rep = FuzzReport("prep: process_record")
    settings = FilterSettings(keep_partial=False)
    cases = _cases(seed_cifs(), n, seed, only)
    corrupt: list[list[str]] = []
    t0 = time.perf_counter()

    def one(case: tuple[str, str, str]) -> tuple[Any, float]:
        t = time.perf_counter()
        r = process_record(RawRecord("fuzz", "fuzz", 0, case[1], cif=case[2]), settings)
        return r, time.perf_counter() - t

    for i, res in map_with_time_limit(one, cases, time_limit_s, on_failure=lambda c, reason, d: (reason, d)):
        mname, sname, text = cases[i]
        if isinstance(res[0], str):  # the time limit or an escaped exception
            outcome, dt = res[0], time_limit_s if res[0] == "timeout" else 0.0
            if res[0] != "timeout":
                rep.crashes.append([mname, sname, str(res[1])[:200]])
        else:
            r, dt = res
            if isinstance(r, Reject):
                outcome = r.reason
                if not r.reason:
                    rep.no_reason.append([mname, sname, r.detail[:200]])
            else:
                outcome = "kept"
                try:
                    stated = stated_formula(text)
                except CIFError as exc:  # kept although its stated formula was never compared
                    corrupt.append([mname, sname, f"kept with an unread stated formula: {exc}"[:200]])
                    stated = None
                if stated is not None:
                    from pymatgen.core import Composition

                    why = formula_disagreement(stated, Composition(r.reduced_formula), True) if r.reduced_formula else "no formula"
                    if why:
                        corrupt.append([mname, sname, why])
        rep.note(mname, sname, outcome, dt, hang_s)
    rep.seconds = time.perf_counter() - t0
    rep.extra["silent_corruption"] = len(corrupt)
    rep.extra["silent_corruption_examples"] = corrupt[:10]
    return rep


def _canonical_seeds() -> list[tuple[str, str]]:
    out = []
    for name, s in seed_structures():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append((name, structure_to_text(s)))
            out.append((f"{name}-p1", structure_to_text(s, mode="p1")))
    return out


def fuzz_checks(n: int = 60, seed: int = 0, hang_s: float = 10.0, time_limit_s: float = 30.0, only: tuple[str, ...] | None = None) -> FuzzReport:
    """(b) :func:`cifllm.evaluation.checks.check_sample` on damaged canonical texts (and 1 in 5 undamaged). A check
    reporting ``check_crashed`` or ``parse_crash`` (an exception from a library, not a verdict) is a crash. ``only``: as
    in :func:`fuzz_prep` (then every text is damaged)."""
    rep = FuzzReport("check_sample")
    seeds = _canonical_seeds()
    by_name = dict(seeds)
    cases = [(("none", c[1], by_name[c[1]]) if k % 5 == 4 and not only else c) for k, c in enumerate(_cases(seeds, n, seed, only))]
    t0 = time.perf_counter()

    def one(text: str) -> tuple[Any, float]:
        t = time.perf_counter()
        v = check_sample(text)
        return v, time.perf_counter() - t

    for i, res in map_with_time_limit(one, [c[2] for c in cases], time_limit_s, on_failure=lambda c, reason, d: (reason, d)):
        mname, sname, _ = cases[i]
        if isinstance(res[0], str):
            outcome, dt = res[0], time_limit_s if res[0] == "timeout" else 0.0
            if res[0] != "timeout":
                rep.crashes.append([mname, sname, str(res[1])[:200]])
        else:
            v, dt = res
            outcome = "valid_all" if v.valid_all else v.reason
            crashed = [f"{k}: {c.reason}: {c.detail}" for k, c in v.checks.items() if c.reason in ("check_crashed", "parse_crash")]
            if crashed:
                rep.crashes.append([mname, sname, crashed[0][:200]])
            if not v.valid_all and not v.reason:
                rep.no_reason.append([mname, sname, "not valid_all, empty reason"])
            if any(c.ok is False and not c.reason for c in v.checks.values()):
                rep.no_reason.append([mname, sname, "a failed check without reason"])
        rep.note(mname, sname, outcome, dt, hang_s)
    rep.seconds = time.perf_counter() - t0
    return rep


GARBAGE_KINDS = ("mutated_texts", "bad_json_lines", "wrong_types", "binary", "empty", "not_objects", "huge_text", "deep_json", "mixed", "deep_nesting")


def deeply_nested(fmt: str, depth: int, rng: random.Random) -> str:
    """A JSON (``fmt="json"``, one line) or YAML (``"yaml"``) document nested ``depth`` levels deep (lists or
    mappings, flow or block style): Python's parsers raise RecursionError on it, not their own error."""
    kind = rng.choice(["list", "dict"])
    if fmt == "json":
        return ("[" * depth + "1" + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)
    if rng.random() < 0.5:  # flow style
        return "a: " + ("[" * depth + "1" + "]" * depth if kind == "list" else "{a: " * depth + "1" + "}" * depth) + "\n"
    depth = min(depth, 1_500)  # block style: indentation grows with depth (1,500 levels: ~1 MB)
    return "".join(" " * i + ("- " if kind == "list" else "a:") + "\n" for i in range(depth)) + " " * depth + "1\n"


def _garbage_samples(rng: random.Random, texts: list[str], kind: str) -> tuple[str, str]:
    """(kind, samples.jsonl content) of one garbage file of ``kind`` (one of :data:`GARBAGE_KINDS`)."""
    def good() -> dict[str, Any]:
        return {"sample_id": f"s{rng.randrange(10**6)}", "cif_text": rng.choice(texts), "n_tokens": rng.randrange(500), "finished": True, "prompt_meta": {}}

    recs: list[str] = []
    if kind == "mutated_texts":
        for _ in range(rng.randint(1, 4)):
            r = good()
            r["cif_text"] = mutate(r["cif_text"], rng)[1]
            recs.append(json.dumps(r))
    elif kind == "bad_json_lines":
        recs = [json.dumps(good()), "{not json", '{"cif_text": "data_', json.dumps(good())[:-5]]
    elif kind == "wrong_types":
        r = good()
        field_, value = rng.choice([("prompt_meta", "target"), ("n_tokens", "many"), ("n_tokens", 3.5), ("cif_text", 42), ("sample_index", "x"), ("finished", "yes"), ("prompt_meta", [1, 2]), ("n_tokens", True)])
        r[field_] = value
        recs = [json.dumps(good()), json.dumps(r)]
    elif kind == "binary":
        return kind, "".join(chr(rng.randrange(256)) for _ in range(300)) + "\x00\n"
    elif kind == "empty":
        return kind, rng.choice(["", "\n", "   \n\n"])
    elif kind == "not_objects":
        recs = [json.dumps(x) for x in ([1, 2], "text", None, 3.5)]
    elif kind == "huge_text":
        r = good()
        r["cif_text"] = r["cif_text"] * 200
        recs = [json.dumps(r)]
    elif kind == "deep_json":  # nested past the parsers' recursion limit, as a whole line or inside a field
        depth = rng.randint(1_000, 20_000)
        recs = [json.dumps(good()), "[" * depth + "]" * depth, '{"cif_text": "x", "prompt_meta": ' + "{\"a\": " * depth + "1" + "}" * depth + "}"]
    elif kind == "deep_nesting":
        deep = deeply_nested("json", rng.choice([2_000, 20_000, 100_000]), rng)
        recs = [json.dumps(good()), rng.choice([deep, '{"sample_id": "d", "cif_text": "x", "prompt_meta": ' + deep + "}"])]
    else:
        recs = [json.dumps(good()), "garbage", json.dumps({"cif_text": None}), json.dumps({})]
    return kind, "\n".join(recs) + "\n"


def fuzz_evaluate(n: int = 6, seed: int = 0, hang_s: float = 10.0) -> FuzzReport:
    """(c) ``cifllm evaluate`` (in process, ``workers=0``) on garbage ``samples.jsonl`` files. Outcome ``ok`` (exit 0,
    ``metrics.json`` with one verdict per record) or ``user_error`` (exit 2, one line on stderr); anything else, or an
    exception, is a crash."""
    rep = FuzzReport("cifllm evaluate")
    rng = random.Random(seed)
    texts = [t for _, t in _canonical_seeds()]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            kind, content = _garbage_samples(rng, texts, GARBAGE_KINDS[(i + seed) % len(GARBAGE_KINDS)])
            run = Path(tmp) / f"run{i}"
            run.mkdir()
            (run / SAMPLES_FILE).write_text(content, errors="replace")
            err = io.StringIO()
            t = time.perf_counter()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    rc = main(["evaluate", "--no-progress", f"samples={run}", "workers=0", "time_limit_s=10", "report=false", "uniqueness=true"])
            except BaseException as exc:  # noqa: BLE001 - the point is to see anything escape
                rc = -1
                rep.crashes.append([kind, f"file {i}", f"{type(exc).__name__}: {str(exc)[:200]}"])
            dt = time.perf_counter() - t
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            if rc == 0:
                n_rec = sum(1 for ln in (run / EVAL_DIR / "checks.jsonl").read_text().splitlines() if ln.strip())
                outcome = "ok" if (run / EVAL_DIR / METRICS_FILE).is_file() else "ok_without_metrics"
                rep.extra.setdefault("verdicts_written", 0)
                rep.extra["verdicts_written"] += n_rec
            elif rc == 2:
                errors = [ln for ln in lines if ln.startswith("cifllm evaluate: error: ")]
                outcome = "user_error" if len(errors) == 1 and "Traceback" not in err.getvalue() else "user_error_not_one_line"
                if outcome != "user_error":
                    rep.no_reason.append([kind, f"file {i}", err.getvalue()[-200:]])
            else:
                outcome = f"exit_{rc}"
                if rc != -1:
                    rep.crashes.append([kind, f"file {i}", err.getvalue()[-200:]])
            rep.note(kind, f"file {i}", outcome, dt, hang_s)
    rep.seconds = time.perf_counter() - t0
    return rep


#: damaged input files a stage reads (issue 31 item 8): JSON/YAML nested past the parsers' recursion limit, a folder
#: where a file is expected, binary and non-UTF-8 content, invalid syntax, an empty file
INPUT_FILE_KINDS = ("deep_yaml", "deep_flow_yaml", "deep_json", "folder", "binary", "non_utf8", "bad_syntax", "empty", "alias_loop")
#: (stage argv with {file}, suffix of the file): every place the CLI reads a JSON / YAML / text file a user names
INPUT_FILE_READERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("data", "--config", "{file}"), ".yaml"),
    (("evaluate", "--config", "{file}"), ".yaml"),
    (("sample", "--config", "{file}"), ".yaml"),
    (("bench", "--config", "{file}"), ".yaml"),
    (("data", "registry={dir}", "--list"), ".yaml"),
    (("sample", "model=default", "prompt_file={file}", "out={out}"), ".jsonl"),
    (("sample", "model=default", "prompt_file={file}", "out={out}"), ".txt"),
    (("evaluate", "samples={file}", "out={out}", "workers=0", "report=false", "--no-progress"), ".jsonl"),
)


def _damaged_file(path: Path, kind: str, rng: random.Random) -> None:
    """Write a damaged input file of ``kind`` (:data:`INPUT_FILE_KINDS`) at ``path`` (a folder for ``folder``)."""
    depth = rng.randint(1_000, 20_000)
    if kind == "folder":
        path.mkdir()
        return
    data: bytes
    if kind == "deep_yaml":
        data = ("seed:\n  " + "- " * depth + "1\n").encode()  # block sequences nested on one line
    elif kind == "deep_flow_yaml":
        data = ("seed: " + "[" * depth + "]" * depth + "\n").encode()
    elif kind == "deep_json":
        data = ("[" * depth + "]" * depth + "\n").encode()
    elif kind == "binary":
        data = bytes(rng.randrange(256) for _ in range(200)) + b"\x00"
    elif kind == "non_utf8":
        data = "composition: caf\xe9\n".encode("latin-1")
    elif kind == "bad_syntax":
        data = rng.choice([b"seed: [1, 2\n", b"{not json\n", b"a: b: c\n  - x\n"])
    elif kind == "alias_loop":
        data = b"seed: &a [*a]\n"
    else:
        data = b""
    path.write_bytes(data)


def fuzz_input_files(n: int = 0, seed: int = 0, hang_s: float = 10.0) -> FuzzReport:
    """(e) Every CLI reader of a user's file (:data:`INPUT_FILE_READERS`) on damaged files (:data:`INPUT_FILE_KINDS`),
    in process. Outcome ``ok`` (exit 0) or ``user_error`` (exit 2, one line on stderr naming the file); an escaped
    exception, another exit code, a traceback or an error line that does not name the file is a crash / no_reason.
    ``n`` = 0: every (reader, kind) pair once; else ``n`` distinct seeded pairs."""
    rep = FuzzReport("cifllm input files")
    rng = random.Random(seed)
    pairs = [(r, k) for r in INPUT_FILE_READERS for k in INPUT_FILE_KINDS]
    if n:
        pairs = rng.sample(pairs, min(n, len(pairs)))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, ((argv, suffix), kind) in enumerate(pairs):
            case = Path(tmp) / f"case{i}"
            case.mkdir()
            reg = case / "registry"
            reg.mkdir()
            target = reg / f"entry{suffix}" if any("{dir}" in a for a in argv) else case / f"input{suffix}"
            _damaged_file(target, kind, rng)
            args = [a.format(file=target, dir=reg, out=case / "out") for a in argv]
            label = f"{argv[0]} {argv[1].split('=')[0]}"
            err = io.StringIO()
            t = time.perf_counter()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    rc = main(args)
            except BaseException as exc:  # noqa: BLE001 - the point is to see anything escape
                rc = -1
                rep.crashes.append([kind, label, f"{type(exc).__name__}: {str(exc)[:200]}"])
            dt = time.perf_counter() - t
            text = err.getvalue()
            errors = [ln for ln in text.splitlines() if ln.startswith(f"cifllm {argv[0]}: error: ")]
            if rc == 0:
                outcome = "ok"
            elif rc == 2 and len(errors) == 1 and "Traceback" not in text:
                outcome = "user_error"
                if kind != "empty" and str(target) not in errors[0]:  # an empty config is valid: a later error is about something else
                    rep.no_reason.append([kind, label, f"error does not name {target.name}: {errors[0][-200:]}"])
            else:
                outcome = f"exit_{rc}"
                if rc != -1:
                    rep.crashes.append([kind, label, text[-300:]])
            rep.note(kind, label, outcome, dt, hang_s)
    rep.seconds = time.perf_counter() - t0
    return rep


def fuzz_tokenizer(n: int = 300, seed: int = 0, hang_s: float = 10.0) -> FuzzReport:
    """(d) The tokenizer on damaged canonical texts and random strings: encode/decode never raise; text of printable
    ASCII round-trips exactly (``decode(encode(t)) == t``); other characters become ``<|unk|>``."""
    rep = FuzzReport("tokenizer")
    tok = build_tokenizer()
    unk = tok.token_to_id("<|unk|>")
    rng = random.Random(seed)
    seeds = _canonical_seeds()
    mismatches: list[list[str]] = []
    t0 = time.perf_counter()
    for i in range(n):
        sname, text = seeds[i % len(seeds)]
        if i % 3 == 2:
            mname, t = "random_chars", "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 0x3000), 10])) for _ in range(rng.randint(0, 400)))
        else:
            mname, t = mutate(text, rng, TOKENIZER_SKIPS)
        t1 = time.perf_counter()
        try:
            ids = tok.encode(t, add_special_tokens=False).ids
            back = tok.decode(ids, skip_special_tokens=False)
            ascii_ok = all(32 <= ord(c) < 127 or c == "\n" for c in t)
            if ascii_ok and back != t:
                mismatches.append([mname, sname, repr(t[:80])])
                outcome = "round_trip_mismatch"
            else:
                outcome = "exact" if back == t else ("unk" if unk in ids else "changed_non_ascii")
        except Exception as exc:
            rep.crashes.append([mname, sname, f"{type(exc).__name__}: {str(exc)[:200]}"])
            outcome = "crash"
        rep.note(mname, sname, outcome, time.perf_counter() - t1, hang_s)
    rep.seconds = time.perf_counter() - t0
    rep.extra["round_trip_mismatches"] = len(mismatches)
    rep.extra["round_trip_mismatch_examples"] = mismatches[:10]
    return rep
