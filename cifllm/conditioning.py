"""Continuous property conditioning: property values written as CIF-style data items before the structure.

Format (one line per property, before the ``data_`` line, in the order of the :class:`PropertySet`)::

    _property_tc_K 92.5
    _property_band_gap_eV 3.10
    data_Ba2YCu3O7
    ...

* The tag is one of the tokenizer's reserved :data:`cifllm.tokenization.PROPERTY_TAGS`; the unit is part of a
  built-in tag; the value is written in fixed-point with the property's ``decimals`` (no exponent; values are rounded,
  never clipped). The base vocabulary is unchanged, and training text and prompts are the same text, so any engine
  (HF, vLLM) samples conditioned structures with nothing special.
* Several properties at once: one line each. A property absent from the prompt means "unconditioned" (fine-tuning
  drops each property line with probability ``cond_dropout`` so the adapter learns both).
* ``density`` (g/cm^3) and ``n_atoms`` (atoms in the written cell) are *derived*: computed from the CIF text itself,
  so any corpus row has them (the toy properties of the conditioning test).
* Your own property: :meth:`PropertySet.with_user` maps a new name onto the next free ``_property_reserved_<k>`` tag
  (32 of them). The mapping is an explicit object: fine-tuning writes it into the adapter folder
  (:data:`PROPERTIES_FILE`, :func:`save_properties`) and sampling / evaluation read it back (:func:`load_properties`);
  there is no process-global registry. Every function takes the :class:`PropertySet` to use (default
  :data:`BUILTIN`, the named properties below, whose text and token ids never change).

:func:`strip_property_lines` removes every ``_property_*`` line whatever the set (generated text -> plain CIF).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.core import Composition

from cifllm.cif import parse_canonical, text_to_structure
from cifllm.core.errors import CifllmError
from cifllm.core.inputs import load_json
from cifllm.tokenization import PROPERTY_TAGS
from cifllm.utils import atomic_write_json

__all__ = [
    "BUILTIN",
    "PROPERTIES",
    "PROPERTIES_FILE",
    "RESERVED_TAGS",
    "ConditioningError",
    "PropertySet",
    "PropertySpec",
    "derive_property",
    "expand_conditions",
    "expand_values",
    "format_property_lines",
    "load_properties",
    "parse_property_lines",
    "property_values",
    "save_properties",
    "split_conditioning",
    "strip_property_lines",
]

#: File in an adapter (or model) folder that records the property set it was trained with.
PROPERTIES_FILE = "properties.json"
#: The 32 tokenizer tags free for user-defined properties, in the order :meth:`PropertySet.with_user` assigns them.
RESERVED_TAGS: tuple[str, ...] = tuple(t for t in PROPERTY_TAGS if t.startswith("_property_reserved_"))
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class ConditioningError(CifllmError, ValueError):
    """A malformed property prompt, an unknown property, or a property value that cannot be written."""


@dataclass(frozen=True)
class PropertySpec:
    """One conditioning property: ``tag`` (a reserved tokenizer tag), ``unit``, ``decimals`` (fixed-point digits).

    ``corpus_keys``: keys of a corpus row's ``properties`` JSON that carry it (first present wins); ``derived``:
    computed from the CIF text (density, n_atoms)."""

    name: str
    tag: str
    unit: str
    decimals: int
    description: str
    corpus_keys: tuple[str, ...] = ()
    derived: bool = False

    def format(self, value: float) -> str:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ConditioningError(f"{self.name}: value {value!r} is not a number") from None
        if not math.isfinite(v):
            raise ConditioningError(f"{self.name}: value {value!r} is not a finite number")
        s = f"{v:.{self.decimals}f}"
        if s.startswith("-") and float(s) == 0.0:
            s = s[1:]
        return s

    def line(self, value: float) -> str:
        return f"{self.tag} {self.format(value)}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["corpus_keys"] = list(self.corpus_keys)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PropertySpec:
        keys = {"name", "tag", "unit", "decimals", "description", "corpus_keys", "derived"}
        unknown = sorted(set(d) - keys)
        if unknown or not {"name", "tag", "decimals"} <= set(d):
            raise ConditioningError(f"property record {dict(d)}: needs name, tag, decimals (unknown keys {unknown})")
        return cls(
            name=str(d["name"]), tag=str(d["tag"]), unit=str(d.get("unit", "")), decimals=int(d["decimals"]),
            description=str(d.get("description", "")), corpus_keys=tuple(d.get("corpus_keys") or ()), derived=bool(d.get("derived", False)),
        )


@dataclass(frozen=True)
class PropertySet:
    """An ordered set of properties (the order property lines are written in). Immutable: pass it explicitly."""

    specs: tuple[PropertySpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [p.name for p in self.specs]
        tags = [p.tag for p in self.specs]
        for what, xs in (("name", names), ("tag", tags)):
            dup = sorted({x for x in xs if xs.count(x) > 1})
            if dup:
                raise ConditioningError(f"property {what}(s) {dup} used twice")
        bad = [t for t in tags if t not in PROPERTY_TAGS]
        if bad:
            raise ConditioningError(f"tag(s) {bad} are not reserved tokenizer tags (see cifllm.tokenization.PROPERTY_TAGS)")
        for p in self.specs:
            if not 0 <= p.decimals <= 8:
                raise ConditioningError(f"property {p.name}: decimals must lie in 0..8, got {p.decimals}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.specs)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def get(self, name: str) -> PropertySpec:
        for p in self.specs:
            if p.name == name:
                return p
        raise ConditioningError(f"unknown property {name!r}; known: {', '.join(self.names) or 'none'}")

    def by_tag(self, tag: str) -> PropertySpec | None:
        return next((p for p in self.specs if p.tag == tag), None)

    def subset(self, names: Iterable[str]) -> PropertySet:
        """The properties ``names`` (each must be known), in this set's order."""
        want = list(names)
        for n in want:
            self.get(n)
        return PropertySet(tuple(p for p in self.specs if p.name in want))

    def with_user(self, name: str, unit: str = "", decimals: int = 2, description: str = "", corpus_keys: Sequence[str] = ()) -> PropertySet:
        """This set plus a user property ``name`` on the next ``_property_reserved_<k>`` tag not used here.

        ``name``: lower-case letters, digits and ``_`` (it is a key of configs and prompt files); a name already in
        the set (a built-in such as ``band_gap``) is returned unchanged. ``corpus_keys`` default to ``(name,)``."""
        if name in self:
            return self
        if not _NAME.match(name):
            raise ConditioningError(f"property name {name!r}: use lower-case letters, digits and '_' (start with a letter, <= 48 chars)")
        used = {p.tag for p in self.specs}
        free = [t for t in RESERVED_TAGS if t not in used]
        if not free:
            raise ConditioningError(f"no reserved property tag left for {name!r}: all {len(RESERVED_TAGS)} are mapped")
        spec = PropertySpec(name, free[0], unit, int(decimals), description or f"user property {name}", tuple(corpus_keys) or (name,))
        return PropertySet((*self.specs, spec))

    def to_json(self) -> dict[str, Any]:
        return {"format": "cifllm-properties-v1", "properties": [p.to_json() for p in self.specs]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PropertySet:
        if not isinstance(d, Mapping) or d.get("format") != "cifllm-properties-v1" or not isinstance(d.get("properties"), list):
            raise ConditioningError("not a cifllm-properties-v1 record (expected {'format': 'cifllm-properties-v1', 'properties': [...]})")
        return cls(tuple(PropertySpec.from_json(p) for p in d["properties"]))


BUILTIN = PropertySet(
    (
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
)
#: The built-in properties by name (read-only view of :data:`BUILTIN`).
PROPERTIES: Mapping[str, PropertySpec] = {p.name: p for p in BUILTIN}
_LINE = re.compile(r"^(_property_[A-Za-z0-9_]+) (-?\d+(?:\.\d+)?)$")


def save_properties(properties: PropertySet, folder: str | Path) -> Path:
    """Write ``properties`` as :data:`PROPERTIES_FILE` into ``folder`` (atomic); returns the file."""
    out = Path(folder) / PROPERTIES_FILE
    atomic_write_json(out, properties.to_json())
    return out


def load_properties(folder: str | Path | None) -> PropertySet:
    """The property set recorded in an adapter / model ``folder``; :data:`BUILTIN` when it records none (adapters
    from before :data:`PROPERTIES_FILE` existed use built-in properties only) or ``folder`` is None."""
    if folder is None:
        return BUILTIN
    f = Path(folder) / PROPERTIES_FILE
    if not f.is_file():
        return BUILTIN
    try:
        return PropertySet.from_json(load_json(f, "property set", ConditioningError))
    except (ValueError, ConditioningError) as exc:
        raise ConditioningError(f"{f}: {exc}") from None


def format_property_lines(values: Mapping[str, float | None], properties: PropertySet = BUILTIN) -> list[str]:
    """Lines (no newline) for ``{property: value}``, in the order of ``properties``; ``None`` values are left out."""
    for k in values:
        properties.get(k)
    return [p.line(values[p.name]) for p in properties if p.name in values and values[p.name] is not None]  # type: ignore[arg-type]


def parse_property_lines(text: str, properties: PropertySet = BUILTIN) -> dict[str, float]:
    """``{property: value}`` of the property lines of ``text`` (anywhere before ``data_``); a malformed line or a tag
    that ``properties`` does not map raises :class:`ConditioningError`."""
    out: dict[str, float] = {}
    for ln in text.split("\n"):
        s = ln.strip()
        if s.startswith("data_"):
            break
        if not s.startswith("_property_"):
            continue
        m = _LINE.match(s)
        spec = properties.by_tag(m.group(1)) if m else None
        if spec is None:
            raise ConditioningError(f"malformed property line {s!r}: expected '<_property_tag> <number>' with a tag of {list(properties.names)}")
        out[spec.name] = float(m.group(2))  # type: ignore[union-attr]
    return out


def strip_property_lines(text: str) -> str:
    """``text`` without its ``_property_*`` lines (generated text -> plain canonical CIF). Pure: no property set needed,
    canonical CIF text never has such a line."""
    if "_property_" not in text:
        return text
    return "\n".join(ln for ln in text.split("\n") if not ln.strip().startswith("_property_"))


def split_conditioning(text: str, properties: PropertySet = BUILTIN) -> tuple[dict[str, float], str]:
    """(property values, the text without its property lines)."""
    return parse_property_lines(text, properties), strip_property_lines(text)


def derive_property(name: str, text: str) -> float:
    """A derived property of canonical CIF text: ``density`` in g/cm^3 or ``n_atoms`` in the written cell."""
    if name == "n_atoms":
        return float(Composition(parse_canonical(text).formula).num_atoms)
    if name == "density":
        return float(text_to_structure(text).density)
    raise ConditioningError(f"property {name!r} is not derived from the CIF text")


def property_values(
    row: Mapping[str, Any], names: Sequence[str], task_property: str | None = None, properties: PropertySet = BUILTIN
) -> dict[str, float]:
    """Values of ``names`` for a corpus/split row: derived from ``row["text"]``, the task's ``value`` column, or the
    row's ``properties`` (dict or JSON string, keys ``corpus_keys``). Missing or non-finite values are left out (that
    row is then unconditioned for that property)."""
    props = row.get("properties") or {}
    if isinstance(props, str):
        props = json.loads(props) if props else {}
    out: dict[str, float] = {}
    for name in names:
        spec = properties.get(name)
        v: Any = None
        if spec.derived:
            try:
                v = derive_property(name, row["text"])
            except Exception:  # an unparsable row simply has no derived value
                v = None
        elif name == task_property and row.get("value") is not None:
            v = row["value"]
        elif name == "year" and spec.tag == "_property_year":
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


def expand_conditions(conditions: Mapping[str, Any], properties: PropertySet = BUILTIN) -> list[dict[str, float]]:
    """Every combination of the properties' values (``{"tc": "50:150:3", "band_gap": 0}`` -> 3 dicts), keys in the
    order of ``properties`` (the order fine-tuning writes the lines in)."""
    for n in conditions:
        properties.get(n)
    names = [n for n in properties.names if n in conditions]  # the training order of the lines
    values = [expand_values(conditions[n]) for n in names]
    for n, vs in zip(names, values, strict=True):
        for v in vs:
            properties.get(n).format(v)  # finite check
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]
