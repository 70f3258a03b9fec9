"""Reading structures from CIF text, structure files and pymatgen JSON; writing CIF files.

Every reader raises :class:`~cifllm.cif.canonical.CIFError` with a reason code and the offending file/record,
never a bare pymatgen/ASE exception.

A CIF text with several data blocks: :func:`read_cif_text` reads the first block that holds a structure (a cell and
atom-site coordinates; :func:`structure_block`) and ignores the others, whatever their names. pymatgen on its own keys
blocks by name, so of several blocks named alike (``data_global`` in mineral databases) it keeps the *last* one in the
*first* one's place; here only the chosen block reaches pymatgen, and callers that read other fields of the CIF (the
stated formula) read them from the same block.

Occupancies: a site whose occupancies sum to at most ``1 +`` :data:`~cifllm.cif.canonical.OCCUPANCY_TOLERANCE` is
rescaled to 1, a larger sum is ``bad_occupancy`` (the same tolerance as canonical text).

pymatgen's own formula check (``check_cif``) is off: it only warns, and its formula parse took > 300 s on a 1.6 MB
``_chemical_formula_sum``; the stated formula is compared by :mod:`cifllm.data.filters` (length-capped first).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

from pymatgen.core import Structure
from pymatgen.io.cif import CifParser, CifWriter

from cifllm.cif.canonical import OCCUPANCY_TOLERANCE, CIFError
from cifllm.utils import atomic_write_text

__all__ = ["read_cif_text", "read_structure_file", "structure_block", "structure_from_dict", "write_cif_file", "MAX_CIF_CHARS"]

#: Larger CIF texts are rejected before parsing (``too_large``): 2 MB of text is ~20k atoms.
MAX_CIF_CHARS = 2_000_000


def _clean(structure: Structure) -> Structure:
    """Drop oxidation states and site properties: canonical text is element-only."""
    s = structure.copy()
    s.remove_oxidation_states()
    for key in list(s.site_properties):
        s.remove_site_property(key)
    return s


_BLOCK_START = re.compile(r"^\s*data_", re.MULTILINE | re.DOTALL)  # where pymatgen's CifFile splits blocks
_HAS_CELL = re.compile(r"^[ \t]*_cell_length_a\b", re.MULTILINE | re.IGNORECASE)
_HAS_SITES = re.compile(r"^[ \t]*_atom_site_(?:fract|cartn)_x\b", re.MULTILINE | re.IGNORECASE)


def structure_block(text: str) -> str | None:
    """The first data block of a CIF text that holds a structure (a ``_cell_length_a`` tag and atom-site
    coordinates), from its ``data_`` line to the next block; None when no block does. Blocks are split where pymatgen
    splits them (a line starting with ``data_``)."""
    starts = [m.start() for m in _BLOCK_START.finditer(text)]
    for a, b in zip(starts, [*starts[1:], len(text)]):
        block = text[a:b]
        if _HAS_CELL.search(block) and _HAS_SITES.search(block):
            return block.lstrip()
    return None


def read_cif_text(text: str, where: str = "<string>") -> Structure:
    """Parse any CIF text with pymatgen: the first data block that holds a structure (:func:`structure_block`; see the
    module docstring), occupancy sums up to ``1 + OCCUPANCY_TOLERANCE`` rescaled to 1. ``where`` names the
    file/record in errors."""
    if not isinstance(text, str) or not text.strip():
        raise CIFError("empty", f"{where}: empty CIF text")
    if len(text) > MAX_CIF_CHARS:
        raise CIFError("too_large", f"{where}: {len(text)} characters > {MAX_CIF_CHARS}")
    if "\x00" in text:
        raise CIFError("binary", f"{where}: text contains NUL bytes")
    if "_cell_length_a" not in text or "_atom_site_" not in text:
        raise CIFError("not_cif", f"{where}: no cell or atom-site data")
    block = structure_block(text)
    if block is None:
        raise CIFError("unparsable", f"{where}: no data_ block with both a cell and atom-site coordinates")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser = CifParser.from_str(block, occupancy_tolerance=1.0 + OCCUPANCY_TOLERANCE, check_cif=False)
            structures = parser.parse_structures(primitive=False, check_occu=True, on_error="raise")
    except Exception as exc:  # pymatgen raises many types here
        msg = str(exc)
        if "exceeded tolerance" in msg:  # pymatgen's message for an occupancy sum above occupancy_tolerance
            raise CIFError("bad_occupancy", f"{where}: a site's occupancies sum to more than 1 + {OCCUPANCY_TOLERANCE} ({msg.splitlines()[-1][:120]})") from None
        raise CIFError("unparsable", f"{where}: {type(exc).__name__}: {msg[:200]}") from None
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
