"""Continuous property conditioning: property values written as CIF-style data items before the structure.

Format (one line per property, before the ``data_`` line, in the order of :data:`PROPERTIES`)::

    _property_tc_K 92.5
    _property_band_gap_eV 3.10
    data_Ba2YCu3O7
    ...

* The tag is one of the tokenizer's reserved :data:`cifllm.tokenization.PROPERTY_TAGS`; the unit is part of the tag;
  the value is written in fixed-point with the property's ``decimals`` (no exponent; values are rounded, never
  clipped). The base vocabulary is unchanged, and training text and prompts are the same text, so any engine (HF,
  vLLM) samples conditioned structures with nothing special.
* Several properties at once: one line each. A property absent from the prompt means "unconditioned" (fine-tuning
  drops each property line with probability ``cond_dropout`` so the adapter learns both).
* ``density`` (g/cm^3) and ``n_atoms`` (atoms in the written cell) are *derived*: computed from the CIF text itself,
  so any corpus row has them (the toy properties of the conditioning test).

:func:`register_property_conditions` makes every property a valid ``conditions`` key of
:func:`cifllm.sampling.prompts.build_prompt` and lets :func:`~cifllm.sampling.prompts.strip_conditions` remove the
lines from generated text before parsing.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cifllm.tokenization import PROPERTY_TAGS

__all__ = [
    "PROPERTIES",
    "PropertySpec",
    "ConditioningError",
    "derive_property",
    "expand_values",
    "expand_conditions",
    "format_property_lines",
    "parse_property_lines",
    "property_values",
    "register_property_conditions",
    "split_conditioning",
]


class ConditioningError(ValueError):
    """A malformed property prompt, an unknown property, or a property value that cannot be written."""


@dataclass(frozen=True)
class PropertySpec:
    """One conditioning property: ``tag`` (a reserved tokenizer tag, unit in its name), ``unit``, ``decimals``."""

    name: str
    tag: str
    unit: str
    decimals: int
    description: str
    corpus_keys: tuple[str, ...] = ()  # keys of the corpus ``properties`` JSON that carry it (first present wins)
    derived: bool = False  # computed from the CIF text (density, n_atoms)

    def format(self, value: float) -> str:
        v = float(value)
        if not math.isfinite(v):
            raise ConditioningError(f"{self.name}: value {value!r} is not a finite number")
        s = f"{v:.{self.decimals}f}"
        if s.startswith("-") and float(s) == 0.0:
            s = s[1:]
        return s

    def line(self, value: float) -> str:
        return f"{self.tag} {self.format(value)}"


PROPERTIES: dict[str, PropertySpec] = {
    p.name: p
    for p in (
        PropertySpec("tc", "_property_tc_K", "K", 1, "superconducting transition temperature (measured)", ("tc",)),
        PropertySpec("band_gap", "_property_band_gap_eV", "eV", 2, "band gap (DFT, PBE)", ("band_gap",)),
        PropertySpec(
            "thermal_conductivity", "_property_thermal_conductivity_W_mK", "W/(m K)", 2,
            "lattice thermal conductivity (AFLOW AGL)", ("thermal_conductivity",),
        ),
        PropertySpec("bulk_modulus", "_property_bulk_modulus_GPa", "GPa", 1, "bulk modulus (AFLOW AEL)", ("bulk_modulus",)),
        PropertySpec("shear_modulus", "_property_shear_modulus_GPa", "GPa", 1, "shear modulus (AFLOW AEL)", ("shear_modulus",)),
        PropertySpec("debye_temperature", "_property_debye_temperature_K", "K", 1, "Debye temperature (AFLOW AGL)", ("debye_temperature",)),
        PropertySpec(
            "formation_energy", "_property_formation_energy_eV_atom", "eV/atom", 3, "formation energy per atom (DFT)",
            ("formation_energy_per_atom",),
        ),
        PropertySpec(
            "e_above_hull", "_property_energy_above_hull_eV_atom", "eV/atom", 3, "energy above the convex hull (DFT)",
            ("e_above_hull", "energy_above_hull"),
        ),
        PropertySpec("density", "_property_density_g_cm3", "g/cm^3", 2, "mass density of the cell (derived from the CIF)", derived=True),
        PropertySpec("n_atoms", "_property_n_atoms", "atoms", 0, "atoms in the written cell (derived from the CIF)", derived=True),
        PropertySpec("year", "_property_year", "year", 0, "year of first report (MPTS-52)"),
    )
}
_BY_TAG = {p.tag: p for p in PROPERTIES.values()}
assert all(t in PROPERTY_TAGS for t in _BY_TAG), "every property tag must be a reserved tokenizer tag"
_LINE = re.compile(r"^(_property_[A-Za-z0-9_]+) (-?\d+(?:\.\d+)?)$")


def _spec(name: str) -> PropertySpec:
    try:
        return PROPERTIES[name]
    except KeyError:
        raise ConditioningError(f"unknown property {name!r}; known: {', '.join(PROPERTIES)}") from None


def format_property_lines(values: Mapping[str, float]) -> list[str]:
    """Lines (no newline) for ``{property: value}``, in the fixed order of :data:`PROPERTIES`."""
    for k in values:
        _spec(k)
    return [PROPERTIES[k].line(values[k]) for k in PROPERTIES if k in values and values[k] is not None]


def parse_property_lines(text: str) -> dict[str, float]:
    """``{property: value}`` of the property lines of ``text`` (anywhere before ``data_``); malformed lines raise."""
    out: dict[str, float] = {}
    for ln in text.split("\n"):
        s = ln.strip()
        if s.startswith("data_"):
            break
        if not s.startswith("_property_"):
            continue
        m = _LINE.match(s)
        if not m or m.group(1) not in _BY_TAG:
            raise ConditioningError(f"malformed property line {s!r}: expected '<_property_tag> <number>'")
        out[_BY_TAG[m.group(1)].name] = float(m.group(2))
    return out


def split_conditioning(text: str) -> tuple[dict[str, float], str]:
    """(property values, the text without its property lines)."""
    props = parse_property_lines(text)
    rest = "\n".join(ln for ln in text.split("\n") if not ln.strip().startswith("_property_"))
    return props, rest


def derive_property(name: str, text: str) -> float:
    """A derived property of canonical CIF text: ``density`` in g/cm^3 or ``n_atoms`` in the written cell."""
    from cifllm.cif import text_to_structure

    if name == "n_atoms":
        from pymatgen.core import Composition

        from cifllm.cif import parse_canonical

        return float(Composition(parse_canonical(text).formula).num_atoms)
    if name == "density":
        return float(text_to_structure(text).density)
    raise ConditioningError(f"property {name!r} is not derived from the CIF text")


def property_values(row: Mapping[str, Any], names: Sequence[str], task_property: str | None = None) -> dict[str, float]:
    """Values of ``names`` for a corpus/split row: derived from ``row["text"]``, the task's ``value`` column, or the
    row's ``properties`` (dict or JSON string). Missing or non-finite values are left out (that row is then
    unconditioned for that property)."""
    import json

    props = row.get("properties") or {}
    if isinstance(props, str):
        props = json.loads(props) if props else {}
    out: dict[str, float] = {}
    for name in names:
        spec = _spec(name)
        v: Any = None
        if spec.derived:
            try:
                v = derive_property(name, row["text"])
            except Exception:  # an unparsable row simply has no derived value
                v = None
        elif name == task_property and row.get("value") is not None:
            v = row["value"]
        elif name == "year":
            v = row.get("year")
        else:
            for k in spec.corpus_keys:
                if props.get(k) is not None:
                    v = props[k]
                    break
        if v is not None:
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(f):
                out[name] = f
    return out


_GRID = re.compile(r"^\s*(-?[\d.]+)\s*:\s*(-?[\d.]+)\s*:\s*(\d+)\s*$")


def expand_values(spec: Any) -> list[float]:
    """One value, a list of values, or a grid: ``"lo:hi:n"`` / ``{"min": lo, "max": hi, "n": n}`` (n evenly spaced
    values, ends included) / ``"a,b,c"``. Raises :class:`ConditioningError` on anything else."""
    if isinstance(spec, bool):
        raise ConditioningError(f"property value {spec!r} is not a number")
    if isinstance(spec, int | float):
        return [float(spec)]
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"min", "max", "n"}
        if unknown or not {"min", "max", "n"} <= set(spec):
            raise ConditioningError(f"a property range needs exactly min, max and n, got {dict(spec)}")
        return _grid(float(spec["min"]), float(spec["max"]), spec["n"])
    if isinstance(spec, str):
        s = spec.strip()
        m = _GRID.match(s)
        if m:
            return _grid(float(m.group(1)), float(m.group(2)), int(m.group(3)))
        try:
            return [float(x) for x in s.split(",")] if s else _fail(spec)
        except ValueError:
            raise ConditioningError(f"property value {spec!r}: expected a number, 'a,b,c' or a grid 'lo:hi:n'") from None
    if isinstance(spec, Iterable):
        vals = list(spec)
        if not vals:
            raise ConditioningError("empty list of property values")
        return [v for x in vals for v in expand_values(x)]
    raise ConditioningError(f"property value {spec!r}: expected a number, a list, or a grid")


def _fail(spec: Any) -> list[float]:
    raise ConditioningError(f"empty property value {spec!r}")


def _grid(lo: float, hi: float, n: Any) -> list[float]:
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ConditioningError(f"grid size n must be a positive integer, got {n!r}")
    n = int(n)
    if hi < lo:
        raise ConditioningError(f"grid max {hi} < min {lo}")
    return [lo] if n == 1 else [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def expand_conditions(conditions: Mapping[str, Any]) -> list[dict[str, float]]:
    """Every combination of the properties' values (``{"tc": "50:150:3", "band_gap": 0}`` -> 3 dicts), keys in the
    order of :data:`PROPERTIES` (the order fine-tuning writes the lines in)."""
    for n in conditions:
        _spec(n)
    names = [n for n in PROPERTIES if n in conditions]  # the training order of the lines
    values = [expand_values(conditions[n]) for n in names]
    for n, vs in zip(names, values):
        for v in vs:
            PROPERTIES[n].format(v)  # finite check
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def _renderer(spec: PropertySpec) -> Callable[[Any], list[str]]:
    def render(value: Any) -> list[str]:
        vals = expand_values(value)
        if len(vals) != 1:
            raise ValueError("one value per prompt; expand lists and grids with cifllm.conditioning.expand_conditions")
        return [spec.line(vals[0])]

    return render


def _is_property_line(line: str) -> bool:
    return line.startswith("_property_")


def register_property_conditions() -> None:
    """Register every property of :data:`PROPERTIES` as a prompt condition (idempotent)."""
    from cifllm.sampling.prompts import Condition, register_condition, registered_conditions

    have = registered_conditions()
    for spec in PROPERTIES.values():
        if spec.name not in have:
            register_condition(Condition(spec.name, _renderer(spec), "before_data", _is_property_line))
