"""Prompts: the text a model continues, built from a composition, a space group, conditions or a free prefix.

Kinds of prompt (the tokenizer prepends ``<|bos|>`` to every one):

* ``de_novo``: empty text, the model writes the whole CIF;
* ``composition`` (crystal structure prediction): ``data_<cell formula>\\n``, the formula written exactly as
  canonical text writes it (:func:`cifllm.cif.format_formula`, e.g. ``data_Na4Cl4``);
* ``composition_sg``: the composition line plus the space-group symbol and number lines;
* ``prefix``: any text, continued as is (end it at a line break: a prefix cut inside a token, e.g. ``data_N`` for
  ``Na``, is tokenized differently from the training text).

Conditioning lines (property tags, :mod:`cifllm.conditioning`) go before everything else; the property set that
maps names to tags is passed explicitly (``properties``, default the built-in properties; an adapter's own set comes
from :func:`cifllm.conditioning.load_properties`). Engines, output and evaluation see only ``Prompt.text`` and the
JSON ``Prompt.meta``, and :func:`strip_conditions` (pure) removes the lines again before a CIF is parsed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pymatgen.core import Composition

from cifllm.cif import CIFError, format_formula, parse_canonical, space_group_number, space_group_symbol
from cifllm.conditioning import BUILTIN, ConditioningError, PropertySet, expand_values, strip_property_lines
from cifllm.core.errors import CifllmError
from cifllm.core.inputs import parse_json, read_text
from cifllm.sampling.constraints import realizable
from cifllm.tokenization import ELEMENTS
from cifllm.utils.resources import resolve_path

__all__ = [
    "Prompt",
    "PromptError",
    "MAX_PROMPT_ATOMS",
    "build_prompt",
    "parse_composition",
    "parse_space_group",
    "read_prompt_file",
    "prompts_from_structures",
    "strip_conditions",
]

PromptKind = Literal["de_novo", "composition", "composition_sg", "prefix"]

#: Prompts whose cell has more atoms than this are rejected (no training structure comes close).
MAX_PROMPT_ATOMS = 1000


class PromptError(CifllmError, ValueError):
    """A prompt that cannot be built (unknown element, malformed formula, bad space group, ...)."""


def strip_conditions(text: str) -> str:
    """Remove every conditioning line (``_property_*``) from generated text -> plain canonical CIF (pure)."""
    return strip_property_lines(text)


@dataclass(frozen=True)
class Prompt:
    """One prompt. ``text`` is continued by the model; ``meta`` (JSON-serializable) travels into every sample."""

    text: str
    kind: PromptKind
    id: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "text": self.text, "meta": self.meta}


_ELEMENTS: frozenset[str] | None = None


def _elements() -> frozenset[str]:
    global _ELEMENTS
    if _ELEMENTS is None:

        _ELEMENTS = frozenset(ELEMENTS)
    return _ELEMENTS


_FORMULA_TOKENS = re.compile(r"(?:\(|\)|[A-Z][a-z]?|\d+(?:\.\d+)?|\s)+")


def parse_composition(formula: str | Composition, z: int | None = None) -> Composition:
    """The cell composition of a prompt: ``formula`` (a formula string or ``Composition``) times ``z``.

    ``"NaCl", z=4`` and ``"Na4Cl4"`` both give ``Na4Cl4``. Raises :class:`PromptError` for an unknown element,
    a malformed formula, a zero or negative count, a Z below 1 or a cell over :data:`MAX_PROMPT_ATOMS` atoms.
    """
    if isinstance(formula, Composition):
        comp = formula
        for el in comp.elements:
            sym = getattr(el, "symbol", str(el))
            if sym not in _elements():
                raise PromptError(f"unknown element {sym!r} in composition {comp}")
        comp = comp.element_composition
    elif isinstance(formula, str):
        f = formula.strip()
        if not f:
            raise PromptError("empty formula")
        if not _FORMULA_TOKENS.fullmatch(f):
            raise PromptError(f"malformed formula {formula!r}: use element symbols and counts, e.g. 'Na4Cl4' or 'SrTiO3'")
        symbols = re.findall(r"[A-Z][a-z]?", f)
        unknown = sorted({s for s in symbols if s not in _elements()})
        if unknown:
            raise PromptError(f"unknown element(s) {unknown} in formula {formula!r}")
        try:
            comp = Composition(f)
        except Exception as exc:  # pymatgen raises ValueError and friends
            raise PromptError(f"malformed formula {formula!r}: {exc}") from None
        missing = sorted(set(symbols) - {e.symbol for e in comp.elements})
        if missing:
            raise PromptError(f"formula {formula!r} gives element(s) {missing} a zero count")
    else:
        raise PromptError(f"composition must be a formula string or a pymatgen Composition, got {type(formula).__name__}")
    if len(comp) == 0:
        raise PromptError(f"formula {formula!r} has no atoms")
    if any(amt <= 0 for amt in comp.values()):
        raise PromptError(f"formula {formula!r} has a non-positive count")
    if z is not None:
        if isinstance(z, bool) or int(z) != z or z < 1:
            raise PromptError(f"Z must be a positive integer, got {z!r}")
        comp = comp * int(z)
    if comp.num_atoms > MAX_PROMPT_ATOMS:
        raise PromptError(f"cell of {comp.num_atoms:g} atoms > {MAX_PROMPT_ATOMS}")
    return comp


def parse_space_group(space_group: int | str) -> int:
    """Space-group number from a number (1-230, int or digits) or a canonical H-M symbol (``Fm-3m``, ``P2_1/c``)."""
    if isinstance(space_group, bool):
        raise PromptError(f"bad space group {space_group!r}")
    if isinstance(space_group, int) or (isinstance(space_group, str) and space_group.strip().isdigit()):
        n = int(space_group)
        if not 1 <= n <= 230:
            raise PromptError(f"space-group number {n} is not in 1..230")
        return n
    if isinstance(space_group, str):
        try:
            return space_group_number(space_group.strip())
        except CIFError:
            raise PromptError(
                f"unknown space-group symbol {space_group!r}: use the number or the spglib short symbol (e.g. 'Fm-3m', 'P2_1/c')"
            ) from None
    raise PromptError(f"bad space group {space_group!r}")


def _prompt_id(kind: str, text: str, meta: Mapping[str, Any]) -> str:
    h = hashlib.sha256(json.dumps([kind, text, dict(meta)], sort_keys=True, default=str).encode()).hexdigest()
    return f"p-{h[:12]}"


def _fit_to_space_group(comp: Composition, number: int) -> tuple[Composition, int]:
    """``comp`` times the smallest factor z (1, 2, ...; at most :data:`MAX_PROMPT_ATOMS` atoms) whose element counts the
    Wyckoff multiplicities of space group ``number`` can realize: ``NaCl`` in Fm-3m is ``Na4Cl4``. ``(comp, 1)`` when
    no factor does (the constraint engine then names the problem) or the counts are not integers."""
    counts = [comp[el] for el in comp.elements]
    if any(abs(c - round(c)) > 1e-8 for c in counts):
        return comp, 1
    base = [int(round(c)) for c in counts]
    for k in range(1, MAX_PROMPT_ATOMS // max(1, sum(base)) + 1):
        if realizable(number, [c * k for c in base]):
            return (comp * k if k > 1 else comp), k
    return comp, 1


def build_prompt(
    composition: str | Composition | None = None,
    z: int | None = None,
    space_group: int | str | None = None,
    prefix: str | None = None,
    conditions: Mapping[str, Any] | None = None,
    id: str | None = None,
    meta: Mapping[str, Any] | None = None,
    properties: PropertySet = BUILTIN,
) -> Prompt:
    """Build and validate a prompt (see the module docstring for the kinds).

    ``prefix`` excludes ``composition``/``space_group``; ``space_group`` needs ``composition``; ``z`` multiplies the
    formula; with a space group and no ``z``, the formula is multiplied by the smallest factor the group's Wyckoff
    multiplicities can realize (``NaCl`` + Fm-3m -> ``Na4Cl4``, recorded as ``meta["z_auto"]``). ``conditions``: ``{property: one value}``, names of ``properties`` (lines written first, in the set's
    order). Extra ``meta`` (e.g. ``target_id`` for CSP) is copied into every sample. Raises :class:`PromptError`.
    """
    conditions = dict(conditions or {})
    unknown = sorted(set(conditions) - set(properties.names))
    if unknown:
        raise PromptError(f"unknown condition(s) {unknown}; known properties: {', '.join(properties.names) or 'none'}")
    m: dict[str, Any] = dict(meta or {})
    if prefix is not None:
        if composition is not None or space_group is not None or z is not None:
            raise PromptError("a free prefix excludes composition, z and space_group")
        if not isinstance(prefix, str):
            raise PromptError(f"prefix must be a string, got {type(prefix).__name__}")
        if "<|" in prefix:
            raise PromptError("prefix must not contain special tokens (<|bos|>, <|eos|>, <|pad|>)")
        if any(ord(c) > 126 or (ord(c) < 32 and c not in "\n\t") for c in prefix):
            raise PromptError("prefix has characters outside printable ASCII (the tokenizer maps them to <|unk|>)")
        body, kind = prefix, "prefix"
    elif composition is not None:
        comp = parse_composition(composition, z)
        n = parse_space_group(space_group) if space_group is not None else None
        if n is not None and z is None:
            comp, auto_z = _fit_to_space_group(comp, n)
            if auto_z > 1:
                m["z_auto"] = auto_z
        formula = format_formula(comp)
        m.update(formula=formula, reduced_formula=format_formula(comp, reduced=True))
        body = f"data_{formula}\n"
        kind = "composition"
        if n is not None:
            body += f"_symmetry_space_group_name_H-M {space_group_symbol(n)}\n_symmetry_Int_Tables_number {n}\n"
            m["sg_number"] = n
            kind = "composition_sg"
    else:
        if space_group is not None or z is not None:
            raise PromptError("space_group and z need a composition")
        body, kind = "", "de_novo"
    before: list[str] = []
    for spec in properties:
        if spec.name not in conditions:
            continue
        value = conditions[spec.name]
        try:
            vals = expand_values(value)
            if len(vals) != 1:
                raise ConditioningError("one value per prompt; expand lists and grids with cifllm.conditioning.expand_conditions")
            before.append(spec.line(vals[0]))
        except ConditioningError as exc:
            raise PromptError(f"condition {spec.name}={value!r}: {exc}") from None
    if conditions:
        m["conditions"] = conditions
    text = "".join(ln + "\n" for ln in before) + body
    return Prompt(text=text, kind=kind, id=id or _prompt_id(kind, text, m), meta=m)  # type: ignore[arg-type]


_JSONL_KEYS = {"id", "composition", "formula", "z", "space_group", "prefix", "conditions", "meta", "n"}


def _prompt_from_record(rec: Mapping[str, Any], where: str, properties: PropertySet = BUILTIN) -> tuple[Prompt, int | None]:
    if not isinstance(rec, Mapping):
        raise PromptError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    cond_keys = set(rec) & set(properties.names)
    unknown = sorted(set(rec) - _JSONL_KEYS - cond_keys)
    if unknown:
        raise PromptError(f"{where}: unknown key(s) {unknown}; valid: {sorted(_JSONL_KEYS | set(properties.names))}")
    if "composition" in rec and "formula" in rec:
        raise PromptError(f"{where}: give 'composition' or 'formula', not both")
    conditions = dict(rec.get("conditions") or {})
    conditions.update({k: rec[k] for k in cond_keys})
    n = rec.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise PromptError(f"{where}: n must be a positive integer, got {n!r}")
    try:
        p = build_prompt(
            composition=rec.get("composition", rec.get("formula")),
            z=rec.get("z"),
            space_group=rec.get("space_group"),
            prefix=rec.get("prefix"),
            conditions=conditions,
            id=str(rec["id"]) if rec.get("id") is not None else None,
            meta=rec.get("meta") or {},
            properties=properties,
        )
    except PromptError as exc:
        raise PromptError(f"{where}: {exc}") from None
    return p, n


def read_prompt_file(path: str | Path, properties: PropertySet = BUILTIN) -> list[tuple[Prompt, int | None]]:
    """Read prompts for a batch job; returns (prompt, samples for this prompt or None for the default).

    * ``*.jsonl``: one JSON object per line with keys ``composition`` (or ``formula``), ``z``, ``space_group``,
      ``prefix``, ``conditions`` (or property names of ``properties``), ``id``, ``meta``, ``n``. ``{}`` is a de novo prompt.
    * anything else: one prompt per line, ``<formula> [<space group>]`` (e.g. ``Na4Cl4`` or ``SrTiO3 Pm-3m``);
      ``*`` is a de novo prompt; blank lines and lines starting with ``#`` are skipped.

    Every line is validated before sampling; the first bad line raises :class:`PromptError` naming file and line.
    """
    p = resolve_path(path, folders=("prompts",))  # builtin:<name> / the checkout's eval/<name>.txt: the packaged file
    out: list[tuple[Prompt, int | None]] = []
    jsonl = p.name.endswith(".jsonl")
    for i, line in enumerate(read_text(p, "prompt file", PromptError).splitlines(), 1):
        s = line.strip()
        if not s or (not jsonl and s.startswith("#")):
            continue
        where = f"{p}:{i}"
        if jsonl:
            rec = parse_json(s, where, PromptError)
            out.append(_prompt_from_record(rec, where, properties))
            continue
        parts = s.split()
        if parts == ["*"]:
            out.append((build_prompt(), None))
            continue
        if len(parts) > 2:
            raise PromptError(f"{where}: expected '<formula> [<space group>]', got {s!r}")
        try:
            out.append((build_prompt(composition=parts[0], space_group=parts[1] if len(parts) == 2 else None), None))
        except PromptError as exc:
            raise PromptError(f"{where}: {exc}") from None
    if not out:
        raise PromptError(f"prompt file {p} has no prompts")
    return out


def prompts_from_structures(items: Iterable[tuple[str, Any]], with_space_group: bool = False) -> list[Prompt]:
    """CSP prompts from (target id, pymatgen ``Structure`` or canonical text): the target's cell composition
    (and space group), with ``meta["target_id"]`` so evaluation can pair samples with their ground truth."""
    prompts = []
    for target_id, item in items:
        if isinstance(item, str):
            parsed = parse_canonical(item)
            comp: Composition | str = parsed.formula
            sg: int | None = parsed.sg_number
        else:
            comp = item.composition
            sg = item.get_space_group_info(symprec=0.1)[1] if with_space_group else None
        prompts.append(
            build_prompt(composition=comp, space_group=sg if with_space_group else None, meta={"target_id": str(target_id)}, id=f"t-{target_id}")
        )
    return prompts
