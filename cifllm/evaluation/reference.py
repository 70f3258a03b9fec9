"""The reference structures novelty is measured against, from whatever the user has.

:func:`load_reference` accepts

* a cifllm corpus folder (``cifllm data``; ``split`` selects one of its splits);
* a folder of structure files (``*.cif``; also pymatgen ``.json``, ``POSCAR``/``.vasp``, ``.extxyz``) or one such file;
* a sequence of pymatgen ``Structure`` objects, pymatgen structure dicts, CIF texts or paths of structure files (mixed
  freely), or one ``Structure`` / CIF text.

Everything but a corpus goes through the corpus pipeline's per-record step (:func:`cifllm.data.filters.process_record`:
parse, the corpus filters, canonical cif-v2 text), each record bounded by ``time_limit_s``; a record that fails is
dropped and counted by reason (``Reference.dropped``), so the reference holds exactly what a corpus built from the same
files would hold (before deduplication).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifllm.core.errors import CifllmError
from cifllm.core.records import MANIFEST_FILE
from cifllm.data.filters import Canonical, FilterSettings, Reject, process_record
from cifllm.data.readers import RawRecord, records_from_paths
from cifllm.evaluation.matching import ReferenceIndex
from cifllm.utils.limits import map_with_time_limit

__all__ = ["STRUCTURE_FILE_SUFFIXES", "Reference", "ReferenceError", "is_cif_text", "load_reference"]

#: files of a reference folder that are read (the readers of ``cifllm data``: CIF, pymatgen JSON, ASE formats)
STRUCTURE_FILE_SUFFIXES = (".cif", ".json", ".vasp", ".poscar", ".extxyz", ".xyz")
#: dataset name of reference records (shown in the reasons of dropped records)
REFERENCE_DATASET = "reference"


class ReferenceError(CifllmError, ValueError):
    """A reference that is none of the accepted kinds (see the module docstring)."""


@dataclass(frozen=True)
class Reference:
    """The reference index plus where it came from: ``source`` (``corpus``, ``files`` or ``objects``), ``given``
    records read, ``dropped`` reason -> count of records the corpus filters rejected."""

    index: ReferenceIndex
    source: str
    description: str
    given: int
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def summary(self) -> dict[str, Any]:
        """The ``metrics.json`` record of the reference."""
        return {"source": self.source, "description": self.description, "given": self.given, "n": len(self.index), "dropped": dict(self.dropped)}


def is_cif_text(value: str) -> bool:
    """Whether a string is CIF text rather than a path (it has a line break or starts with a ``data_`` block)."""
    return "\n" in value or value.lstrip().startswith("data_")


def _is_structure(obj: Any) -> bool:
    return hasattr(obj, "lattice") and hasattr(obj, "as_dict")


def _folder_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and (p.suffix.lower() in STRUCTURE_FILE_SUFFIXES or p.name.upper().startswith(("POSCAR", "CONTCAR"))))


def _path_records(p: Path, what: str) -> list[RawRecord]:
    if p.is_dir():
        files = _folder_files(p)
        if not files:
            raise ReferenceError(
                f"{what} {p}: a folder with neither a corpus manifest ({MANIFEST_FILE}) nor structure files "
                f"({', '.join(STRUCTURE_FILE_SUFFIXES)})"
            )
        return list(records_from_paths(files, dataset=REFERENCE_DATASET, rel_to=p))
    if not p.exists():
        raise ReferenceError(f"{what} {p} does not exist (give a corpus folder, a folder of CIF files, CIF texts or Structures)")
    return list(records_from_paths([p], dataset=REFERENCE_DATASET, rel_to=p.parent))


def _object_records(items: Iterable[Any]) -> list[RawRecord]:
    out: list[RawRecord] = []
    for i, item in enumerate(items):
        rid = f"reference[{i}]"
        if _is_structure(item):
            out.append(RawRecord(REFERENCE_DATASET, "(given)", i, rid, structure=item.as_dict()))
        elif isinstance(item, Mapping) and "lattice" in item and "sites" in item:
            out.append(RawRecord(REFERENCE_DATASET, "(given)", i, rid, structure=dict(item)))
        elif isinstance(item, str) and is_cif_text(item):
            out.append(RawRecord(REFERENCE_DATASET, "(given)", i, rid, cif=item))
        elif isinstance(item, (str, Path)):
            out.extend(_path_records(Path(item), f"reference[{i}]"))
        else:
            raise ReferenceError(
                f"reference[{i}] is a {type(item).__name__}: give pymatgen Structures (or their dicts), CIF texts or paths of structure files"
            )
    return out


class _Canonicalize:
    """Picklable per-record step: the corpus pipeline's parse + filters + canonical text."""

    def __init__(self, settings: FilterSettings) -> None:
        self.settings = settings

    def __call__(self, rec: RawRecord) -> Canonical | Reject:
        return process_record(rec, self.settings)


def _index_records(records: Sequence[RawRecord], settings: FilterSettings, workers: int, time_limit_s: float) -> tuple[ReferenceIndex, dict[str, int]]:
    kept: list[Canonical | None] = [None] * len(records)
    dropped: Counter[str] = Counter()

    def failed(rec: RawRecord, reason: str, detail: str) -> Reject:
        return Reject(rec.dataset, rec.file, rec.row, rec.record_id, reason, detail[:300])

    for i, r in map_with_time_limit(_Canonicalize(settings), records, time_limit_s, workers, on_failure=failed):
        if isinstance(r, Canonical):
            kept[i] = r
        else:
            dropped[r.reason] += 1
    good = [c for c in kept if c is not None]
    index = ReferenceIndex.from_records([c.text for c in good], [c.reduced_formula for c in good], [c.record.record_id for c in good])
    return index, dict(dropped.most_common())


def load_reference(
    reference: Any,
    split: str | None = None,
    workers: int = 0,
    time_limit_s: float = 60.0,
    settings: FilterSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> Reference | None:
    """The :class:`Reference` of ``reference`` (see the module docstring); None for None / ``""``. ``split`` applies to
    a corpus folder only (anything else is used whole, with a note through ``log``). ``workers`` processes (0 = this process) and ``time_limit_s`` per record canonicalize
    everything that is not a corpus. Raises :class:`ReferenceError` for something that is none of the accepted kinds,
    and when no given structure survives the filters."""
    if reference is None or (isinstance(reference, str) and not reference.strip()):
        return None
    if isinstance(reference, Reference):
        return reference
    if isinstance(reference, (str, Path)) and not (isinstance(reference, str) and is_cif_text(reference)):
        p = Path(reference).expanduser()
        if p.is_dir() and (p / MANIFEST_FILE).is_file():
            index = ReferenceIndex.from_corpus(p, split=split)
            return Reference(index, "corpus", f"corpus {p}" + (f" (split {split})" if split else ""), len(index))
        records = _path_records(p, "reference")
        source, desc = "files", f"structure files under {p}" if p.is_dir() else f"structure file {p}"
    else:
        items = [reference] if (_is_structure(reference) or isinstance(reference, str)) else reference
        if not isinstance(items, Iterable) or isinstance(items, (bytes, Mapping)):
            raise ReferenceError(f"reference is a {type(reference).__name__}: give a corpus folder, a folder of CIF files, CIF texts or Structures")
        records = _object_records(items)
        source, desc = "objects", f"{len(records)} given structures / CIF texts"
    if split and log is not None:  # eval.yaml's reference_split: train is meant for a corpus
        log(f"note: reference_split={split!r} applies to a corpus folder only; all of {desc} is the reference")
    if not records:
        raise ReferenceError(f"reference: {desc} holds no structure")
    index, dropped = _index_records(records, settings or FilterSettings(), workers, time_limit_s)
    if log is not None and dropped:
        log(f"reference: kept {len(index)} of {len(records)} structures; dropped " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    if not len(index):
        raise ReferenceError(f"reference: none of the {len(records)} structures of {desc} passed the corpus filters ({dropped})")
    return Reference(index, source, desc, len(records), dropped)
