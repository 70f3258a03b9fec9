"""Reading structures from CIF text, structure files and pymatgen JSON; writing CIF files.

Every reader raises :class:`~cifllm.cif.canonical.CIFError` with a reason code and the offending file/record,
never a bare pymatgen/ASE exception.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from pymatgen.core import Structure
from pymatgen.io.cif import CifParser, CifWriter

from cifllm.cif.canonical import CIFError
from cifllm.utils import atomic_write_text

__all__ = ["read_cif_text", "read_structure_file", "structure_from_dict", "write_cif_file", "MAX_CIF_CHARS"]

#: Larger CIF texts are rejected before parsing (``too_large``): 2 MB of text is ~20k atoms.
MAX_CIF_CHARS = 2_000_000


def _clean(structure: Structure) -> Structure:
    """Drop oxidation states and site properties: canonical text is element-only."""
    s = structure.copy()
    s.remove_oxidation_states()
    for key in list(s.site_properties):
        s.remove_site_property(key)
    return s


def read_cif_text(text: str, where: str = "<string>") -> Structure:
    """Parse any CIF text (first data block) with pymatgen. ``where`` names the file/record in errors."""
    if not isinstance(text, str) or not text.strip():
        raise CIFError("empty", f"{where}: empty CIF text")
    if len(text) > MAX_CIF_CHARS:
        raise CIFError("too_large", f"{where}: {len(text)} characters > {MAX_CIF_CHARS}")
    if "\x00" in text:
        raise CIFError("binary", f"{where}: text contains NUL bytes")
    if "_cell_length_a" not in text or "_atom_site_" not in text:
        raise CIFError("not_cif", f"{where}: no cell or atom-site data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = CifParser.from_str(text).parse_structures(primitive=False, on_error="raise")
    except Exception as exc:  # pymatgen raises many types here
        raise CIFError("unparsable", f"{where}: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not structures:
        raise CIFError("unparsable", f"{where}: no structure in CIF")
    s = structures[0]
    if len(s) == 0:
        raise CIFError("empty_structure", f"{where}: no sites")
    return _clean(s)


def structure_from_dict(d: dict, where: str = "<dict>") -> Structure:
    """A pymatgen ``Structure.as_dict()`` (or a ComputedStructureEntry dict with a ``structure`` key)."""
    try:
        if "structure" in d and "lattice" not in d:
            d = d["structure"]
        return _clean(Structure.from_dict(d))
    except Exception as exc:
        raise CIFError("unparsable", f"{where}: not a pymatgen Structure dict ({type(exc).__name__}: {exc})") from None


def read_structure_file(path: str | Path) -> list[Structure]:
    """Read every structure in a file: ``.cif``, pymatgen ``.json``, or anything ASE reads (extxyz, POSCAR, ...)."""
    p = Path(path)
    if p.is_dir():
        raise CIFError("missing_file", f"{p}: is a directory, expected a file")
    if not p.is_file():
        raise CIFError("missing_file", f"{p}: no such file")
    if p.stat().st_size == 0:
        raise CIFError("empty", f"{p}: empty file")
    name = p.name.lower()
    if name.endswith(".cif"):
        raw = p.read_bytes()
        if b"\x00" in raw[:4096]:
            raise CIFError("binary", f"{p}: binary file")
        return [read_cif_text(raw.decode("utf-8", errors="replace"), str(p))]
    if name.endswith(".json"):
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CIFError("unparsable", f"{p}: invalid JSON ({exc})") from None
        except RecursionError:
            raise CIFError("unparsable", f"{p}: JSON nested too deeply") from None
        items = data if isinstance(data, list) else [data]
        return [structure_from_dict(d, f"{p}[{i}]") for i, d in enumerate(items)]
    try:
        from ase.io import read as ase_read
        from pymatgen.io.ase import AseAtomsAdaptor

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = ase_read(str(p), index=":")
        return [_clean(AseAtomsAdaptor.get_structure(a)) for a in atoms]
    except Exception as exc:
        raise CIFError("unparsable", f"{p}: ASE could not read it ({type(exc).__name__}: {str(exc)[:200]})") from None


def write_cif_file(structure: Structure, path: str | Path, symprec: float | None = None) -> None:
    """Write a full CIF (with symmetry operators) that any CIF reader opens; atomic (temp file + rename)."""
    atomic_write_text(Path(path), str(CifWriter(structure, symprec=symprec)))
