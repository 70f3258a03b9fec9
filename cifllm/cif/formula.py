"""Chemical formulas as CIFs state them (``_chemical_formula_sum``, ``_chemical_formula_moiety``), read into a pymatgen
``Composition`` (pure; pymatgen's formula parser does the element counting).

Accepted beyond pymatgen's own syntax (``'Mg3 Si4 O12 H2'``, ``Fe0.5 Mg1.5 Si O4``):

* groups in parentheses, square or curly brackets, with a count after them: ``'Mg3 Si4 (O12 H2)'``,
  ``'Ca [C O3]'``, ``'Cu S O4 (H2 O)5'``;
* adducts and hydrates joined by a dot that is not a decimal point (``' . '``, ``'·'``, ``'•'``), each part with an
  optional leading count: ``'Cu S O4 . 5 H2 O'`` is ``Cu S O9 H10``;
* moieties separated by commas (``_chemical_formula_moiety``), each with an optional leading count, with or without
  parentheses: ``'2(C6 H5 N), Cu Cl4'``; charges (``'Na+'``, ``'Cl-'``, ``'1+'``, ``'3-'``) are dropped.

Not a formula, so nothing to compare: ``?``, ``.`` or an empty value (:func:`parse_stated_formula` returns None).
Everything else that does not parse - a comma inside brackets (``'(Mg,Fe)2 Si O4'``: site substitution of unknown
ratio), unknown symbols, a count that is not a positive finite number - raises :class:`CIFError`
``formula_unparsable``; a value longer than :data:`~cifllm.cif.canonical.MAX_FORMULA_CHARS` raises
``formula_too_long`` before any parsing.
"""

from __future__ import annotations

import math
import re
import warnings

from pymatgen.core import Composition, Element

from cifllm.cif.canonical import MAX_FORMULA_CHARS, CIFError

__all__ = ["parse_stated_formula"]

_LEADING_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(?=[A-Z(])")
_CHARGE_TOKEN = re.compile(r"(?<![^\s(\[{])\d*[+-](?=[\s,)\]}]|$)")  # a separate charge token: '1+', '3-', '+'
_ELEMENT_CHARGE = re.compile(r"([A-Z][a-z]?\d*(?:\.\d+)?)\d*[+-]+(?=[\s,)\]}]|$)")  # 'Na+', 'Cl-', 'O2-' -> 'Na', 'Cl', 'O2'
_HYDRATE_DOT = re.compile(r"\s*[\u00b7\u2022\u2219\u22c5]\s*|(?<!\d)\.(?!\d)|\s+\.\s*|\s*\.\s+")


def _part(value: str, original: str) -> Composition:
    """One moiety or adduct part: an optional leading count, then a pymatgen formula (brackets as parentheses)."""
    value = value.strip()
    mult = 1.0
    m = _LEADING_COUNT.match(value)
    if m and m.end() < len(value):
        mult = float(m.group(1))
        value = value[m.end() :]
    value = value.translate(str.maketrans("[]{}", "()()"))
    if "," in value or not value:
        raise CIFError("formula_unparsable", f"{original!r}: cannot read {value!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comp = Composition(value.replace(" ", ""))
    except Exception as exc:  # pymatgen raises ValueError, KeyError, ... on a bad formula
        raise CIFError("formula_unparsable", f"{original!r}: {type(exc).__name__}: {str(exc)[:120]}") from None
    if len(comp) == 0 or not (mult > 0 and math.isfinite(mult)):
        raise CIFError("formula_unparsable", f"{original!r}: no elements in {value!r}")
    unknown = [str(sp) for sp in comp if not isinstance(sp, Element)]
    if unknown:
        raise CIFError("formula_unparsable", f"{original!r}: unknown element(s) {unknown}")
    return comp * mult


def _top_level_split(value: str, sep: str) -> list[str] | None:
    """``value`` split at ``sep`` outside brackets; None when a ``sep`` sits inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(value):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep:
            if depth:
                return None
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def parse_stated_formula(value: str | None) -> Composition | None:
    """The composition a CIF formula value states (see the module docstring for the syntax); None when the value
    states none (missing, empty, ``?`` or ``.``). Raises :class:`CIFError` ``formula_too_long`` or
    ``formula_unparsable``."""
    if value is None:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1].strip()
    if not value or value in ("?", "."):
        return None
    if len(value) > MAX_FORMULA_CHARS:
        raise CIFError("formula_too_long", f"formula of {len(value)} characters > {MAX_FORMULA_CHARS}")
    text = _ELEMENT_CHARGE.sub(r"\1", _CHARGE_TOKEN.sub(" ", value))
    moieties = _top_level_split(text, ",")
    if moieties is None:
        raise CIFError("formula_unparsable", f"{value!r}: a comma inside brackets (a substitution of unknown ratio)")
    total = Composition()
    for moiety in moieties:
        for part in _HYDRATE_DOT.split(moiety):
            if part.strip():
                total += _part(part, value)
    if len(total) == 0 or any(not (a > 0 and math.isfinite(a)) for a in total.values()):
        raise CIFError("formula_unparsable", f"{value!r}: no positive element counts")
    return total
