"""CIF logic: the only subpackage that talks to pymatgen for CIF I/O. Importing it silences pymatgen's "No Pauling
electronegativity" warning, by its message only (:mod:`cifllm.cif.pymatgen_warnings`)."""

from cifllm.cif.canonical import (
    LOOP_TAGS,
    LOOP_TAGS_V1,
    SPACE_GROUP_SYMBOLS,
    TEXT_FORMAT,
    TEXT_FORMATS,
    CanonicalCIF,
    CIFError,
    SiteRow,
    cell_volume,
    check_wyckoff,
    expand_sites,
    format_formula,
    parse_canonical,
    space_group_number,
    space_group_symbol,
    structure_to_text,
    text_format_of,
    text_to_structure,
)
from cifllm.cif.pymatgen_warnings import silence_missing_electronegativity

silence_missing_electronegativity()

__all__ = [
    "SPACE_GROUP_SYMBOLS",
    "CanonicalCIF",
    "CIFError",
    "LOOP_TAGS",
    "LOOP_TAGS_V1",
    "TEXT_FORMAT",
    "TEXT_FORMATS",
    "SiteRow",
    "cell_volume",
    "check_wyckoff",
    "expand_sites",
    "format_formula",
    "parse_canonical",
    "space_group_number",
    "space_group_symbol",
    "structure_to_text",
    "text_format_of",
    "text_to_structure",
]
