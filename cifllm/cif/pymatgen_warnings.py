"""pymatgen warnings cifllm silences, each by its exact message (never a blanket ignore).

``No Pauling electronegativity for He/Ne/Ar...``: pymatgen warns the first time anything reads ``Element.X`` of an
element without a Pauling value - and it reads it inside every formula reduction and sort, so any noble-gas sample or
corpus row printed it on every run. cifllm already handles the NaN it returns (such elements sort last in canonical
formulas; the bond-length rule falls back to atomic radii), so the warning tells a user nothing they can act on.

:func:`silence_missing_electronegativity` adds one filter for that message (category ``UserWarning``) in front of the
process's filters, and reads ``Element.X`` of every element once under it: pymatgen caches the value (a
``cached_property``), so the warning cannot fire later even where the filters are reset (``warnings.catch_warnings``
around an import, pytest's per-test filters). It is called when :mod:`cifllm.cif` (the layer through which cifllm
reaches pymatgen) is imported, so it holds in worker processes too; every other warning, pymatgen's included, is
untouched.
"""

from __future__ import annotations

import warnings

from pymatgen.core.periodic_table import Element

__all__ = ["MISSING_ELECTRONEGATIVITY", "silence_missing_electronegativity"]

#: the start of pymatgen's message (``pymatgen.core.periodic_table.Element.X``), as a ``warnings`` message regex
MISSING_ELECTRONEGATIVITY = r"No Pauling electronegativity for [A-Z][a-z]{0,2}\. Setting to NaN"


def silence_missing_electronegativity() -> None:
    """Ignore pymatgen's "No Pauling electronegativity for <element>" warning in this process (idempotent)."""
    warnings.filterwarnings("ignore", message=MISSING_ELECTRONEGATIVITY, category=UserWarning)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=MISSING_ELECTRONEGATIVITY, category=UserWarning)
        for el in Element:
            _ = el.X  # cached by pymatgen: NaN for He, Ne, Ar, ..., read here once, quietly
