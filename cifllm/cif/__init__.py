"""CIF logic: the only subpackage that talks to pymatgen for CIF I/O."""

from cifllm.cif.canonical import (
    SPACE_GROUP_SYMBOLS,
    CanonicalCIF,
    CIFError,
    SiteRow,
    expand_sites,
    format_formula,
    parse_canonical,
    space_group_number,
    space_group_symbol,
    structure_to_text,
    text_to_structure,
)

__all__ = [
    "SPACE_GROUP_SYMBOLS",
    "CanonicalCIF",
    "CIFError",
    "SiteRow",
    "expand_sites",
    "format_formula",
    "parse_canonical",
    "space_group_number",
    "space_group_symbol",
    "structure_to_text",
    "text_to_structure",
]
